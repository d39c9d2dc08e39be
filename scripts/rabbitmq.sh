#!/usr/bin/env bash
# Makes sure a RabbitMQ answers at AMQP_URL's host and port.
# If none does and the host is local: start the installed rabbitmq-server, or
# on Debian/Ubuntu as root install it first; anywhere else, say what to install.
set -euo pipefail

url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
hostport=${url#*://}; hostport=${hostport#*@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}
[ "$port" = "$hostport" ] && port=5672

listening() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if listening; then
  echo "rabbitmq: $host:$port answers"
  exit 0
fi
case "$host" in
  127.0.0.1|localhost|::1) ;;
  *) echo "rabbitmq: nothing answers at $host:$port (AMQP_URL); start that broker" >&2; exit 1 ;;
esac

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "rabbitmq: installing Debian's rabbitmq-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
  else
    cat >&2 <<MSG
rabbitmq: nothing answers at $host:$port and rabbitmq-server is not installed.
Install RabbitMQ 3.10 or newer (quorum queues), e.g.:
  Debian/Ubuntu:  sudo apt-get install rabbitmq-server
  macOS:          brew install rabbitmq && brew services start rabbitmq
  Docker:         docker run -d -p 5672:5672 rabbitmq:3-management
or point AMQP_URL at a broker you have.
MSG
    exit 1
  fi
fi

echo "rabbitmq: starting rabbitmq-server"
# Debian's package may have started it already (with systemd); that's fine.
listening || rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 120); do
  if listening; then echo "rabbitmq: $host:$port answers"; exit 0; fi
  sleep 0.5
done
echo "rabbitmq: started, but $host:$port did not answer within 60 s (see /var/log/rabbitmq)" >&2
exit 1
