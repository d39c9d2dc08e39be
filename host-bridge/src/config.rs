//! Settings: every flag, its environment mirror, its default, and the checks
//! that turn a bad combination into one clear error.
//!
//! This module only describes configuration. What each setting drives lives
//! with the module that uses it.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use lapin::uri::AMQPUri;

/// What one bridge process does. One process may do them all, which is how
/// `make up` runs it locally; in Kubernetes the producer's pod enables
/// publish and ingress, the worker's consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Role {
    /// Serve the loopback publish API that the producer component calls.
    Publish,
    /// Consume the queue and push each job to the worker component.
    Consume,
    /// Take clients' requests for the producer component, with this
    /// bridge's timeouts and limits, and forward them to it on loopback.
    Ingress,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// host-bridge's settings. Every flag has an environment variable mirror, so
/// a Kubernetes manifest can set them with `env:`.
#[derive(Debug, Clone, Parser)]
#[command(name = "host-bridge", version, about)]
pub struct Config {
    /// AMQP URLs of the brokers, comma-separated: the nodes of one cluster.
    /// The bridge connects to one of them (picked at random, so that many
    /// bridges spread over the nodes) and moves to the next whenever a
    /// connection is lost or refused. The default is RabbitMQ's
    /// local-development account. A comma inside a URL must be written `%2C`.
    #[arg(
        long = "amqp-url",
        env = "AMQP_URL",
        value_delimiter = ',',
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_urls: Vec<String>,

    /// The AMQP user, overriding the URLs' own: for credentials kept in a
    /// Secret apart from the addresses (e.g. the RabbitMQ Cluster Operator's
    /// `<cluster>-default-user`), with no URL-encoding to get wrong.
    #[arg(long, env = "AMQP_USERNAME", hide_env_values = true)]
    pub amqp_username: Option<String>,

    /// The AMQP password, overriding the URLs' own (see `--amqp-username`).
    #[arg(long, env = "AMQP_PASSWORD", hide_env_values = true)]
    pub amqp_password: Option<String>,

    /// The roles to run, comma-separated.
    #[arg(
        long = "roles",
        env = "BRIDGE_ROLES",
        value_delimiter = ',',
        default_value = "publish,consume"
    )]
    pub roles: Vec<Role>,

    /// The work queue. Its dead-letter exchange and queue are named
    /// `<queue>.dlx` and `<queue>.dead`.
    #[arg(long, env = "QUEUE", default_value = "jobs")]
    pub queue: String,

    /// How many times a job may be delivered before the broker dead-letters
    /// it (the quorum queue's `x-delivery-limit`).
    #[arg(long, env = "DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,

    /// Replicas of the work queue and the dead-letter queue, on declaring
    /// them (`x-quorum-initial-group-size`); unset, the broker's default
    /// (every cluster node, on RabbitMQ 3.x). A queue declared while fewer
    /// nodes are up gets fewer members, and RabbitMQ 3.x does not add the
    /// rest by itself (`rabbitmq-queues grow`).
    #[arg(long, env = "QUORUM_INITIAL_GROUP_SIZE")]
    pub quorum_initial_group_size: Option<u32>,

    /// Optional cap on ready messages (`x-max-length`). When full, publishes
    /// are refused (`x-overflow: reject-publish`) and the producer answers 503.
    #[arg(long, env = "QUEUE_MAX_LENGTH")]
    pub max_length: Option<u32>,

    /// Address of the publish API. Loopback by default: only the producer in
    /// the same pod may call it.
    #[arg(long, env = "PUBLISH_ADDR", default_value = "127.0.0.1:9091")]
    pub publish_addr: SocketAddr,

    /// Address of the ingress role's listener: what clients (the producer's
    /// Service) connect to.
    #[arg(long, env = "INGRESS_ADDR", default_value = "0.0.0.0:8000")]
    pub ingress_addr: SocketAddr,

    /// Where the ingress role forwards requests: the producer component's
    /// own listener, `http://host:port` on loopback (containerd-shim-spin
    /// serves on port 80).
    #[arg(long, env = "PRODUCER_URL", default_value = "http://127.0.0.1:8080")]
    pub producer_url: String,

    /// How long the producer component may take to answer a forwarded
    /// request. Past it: `504 outcome_unknown`. Keep it above the
    /// producer's own `BRIDGE_TIMEOUT_MS` (7 s), so that its verdict, not
    /// this one, is what the client hears.
    #[arg(long, env = "PRODUCER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub producer_timeout: Duration,

    /// Requests the ingress role holds at once (each buffers at most one
    /// 64 KiB body). Past it: `503 overloaded` at once. The default matches
    /// the runtime's concurrent-request limit in `make up`.
    #[arg(long, env = "INGRESS_MAX_IN_FLIGHT", default_value_t = 256)]
    pub ingress_max_in_flight: u32,

    /// How long a publish may wait for the broker's confirm. Past it the
    /// caller gets `504 outcome_unknown`: the message was handed to the
    /// broker and may still be queued.
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,

    /// Publishes in flight at once, from reading the body to the broker's
    /// verdict. Bounds memory under any broker fault, with the 2 MiB bound
    /// on the job bytes they hold (`publish::MAX_BYTES_IN_FLIGHT`): 128 let
    /// 200 clients of 60 KB jobs take the bridge past 48 MiB through a
    /// series of broker faults; 64 is still above the 64 clients at which
    /// the publish path is fastest (docs/BENCHMARKS.md). Past it: `503
    /// overloaded` at once.
    #[arg(long, env = "MAX_PUBLISHES_IN_FLIGHT", default_value_t = 64)]
    pub max_publishes_in_flight: u32,

    /// The AMQP heartbeat. A link that carries nothing for two heartbeats is
    /// declared dead and reconnected; 10 s detects a blackholed link within
    /// about 20-25 s (RabbitMQ's default of 60 s takes two minutes).
    #[arg(long, env = "AMQP_HEARTBEAT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// How long one connection attempt (TCP, TLS, AMQP handshake) may take.
    /// A paused or blackholed broker accepts TCP and then says nothing.
    #[arg(long, env = "AMQP_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Connections each HTTP listener serves at once; more wait in the
    /// kernel's backlog. With the read timeouts this bounds what slow or
    /// idle clients can hold.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: u32,

    /// How long a client may take to send a request's headers, and how long
    /// a connection may sit idle between requests.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a client may take to send a request's body (`408` past it).
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,

    /// The `Retry-After` (seconds) sent with a 503 from the publish API.
    #[arg(long, env = "RETRY_AFTER_SECS", default_value_t = 1)]
    pub retry_after_secs: u32,

    /// Address of the admin server: /metrics, /healthz, /readyz.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,

    /// Where the consume role pushes each job (the worker component).
    #[arg(long, env = "WORKER_URL", default_value = "http://127.0.0.1:3000/work")]
    pub worker_url: String,

    /// Jobs in progress at once: the consumer's prefetch count.
    #[arg(long, env = "CONCURRENCY", default_value_t = 1)]
    pub concurrency: u16,

    /// How long one push to the worker may take before the job is requeued.
    /// Keep it at or below `--shutdown-grace`, so that a drain never has to
    /// abandon a push that is still allowed to finish.
    #[arg(long, env = "JOB_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub job_timeout: Duration,

    /// How long a graceful stop may wait for in-flight work. Keep it below
    /// the pod's `terminationGracePeriodSeconds`; see docs/RELIABILITY.md.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How long a failing worker (5xx, 3xx, a timeout, a reset, an answer
    /// cut short) is retried in place, with backoff, before the job goes
    /// back to the queue and spends one of its deliveries. Consumption is
    /// paused meanwhile, so a worker outage shorter than this dead-letters
    /// nothing. An unreachable worker, or one that answers 408, 429 or 503,
    /// is waited for without limit and spends nothing. `0s`: requeue after
    /// the first failure.
    #[arg(long, env = "PUSH_RETRY_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub push_retry_window: Duration,

    /// The longest wait between pushes to a failing or unreachable worker
    /// (exponential, jittered, from 100 ms; a `Retry-After` is honoured up
    /// to this).
    #[arg(long, env = "PUSH_MAX_BACKOFF", default_value = "5s", value_parser = humantime::parse_duration)]
    pub push_max_backoff: Duration,

    /// How often the queue's depth is read (passive declare) for metrics.
    #[arg(long, env = "QUEUE_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub queue_poll_interval: Duration,

    /// The longest wait between reconnect attempts.
    #[arg(long, env = "RECONNECT_MAX_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    pub reconnect_max_backoff: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Where to export spans, OTLP over HTTP with protobuf: the collector's
    /// base URL (`/v1/traces` is appended, or set
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`). Unset: no spans are made, and
    /// trace context is still passed on. The SDK's own variables apply too
    /// (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
    /// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// One broker the bridge may connect to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where and how to connect, credentials included.
    pub uri: AMQPUri,
    /// `host:port`, without credentials: what logs, metrics and `/readyz`
    /// show.
    pub label: String,
}

impl Endpoint {
    fn new(uri: AMQPUri) -> Self {
        let host = &uri.authority.host;
        let label = if host.contains(':') {
            format!("[{host}]:{}", uri.authority.port)
        } else {
            format!("{host}:{}", uri.authority.port)
        };
        Self { uri, label }
    }
}

/// A setting that parsed but can't work. `main` exits 64 (EX_USAGE) on it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    /// The flag at fault.
    pub setting: &'static str,
    /// Why.
    pub reason: String,
}

/// The `host:port` of an `http://host[:port][/]` URL, the only shape the
/// component's address may take (a path prefix would be one more thing for
/// routes to disagree on); `Err` says why not.
pub fn upstream_addr(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "must be an http:// URL".to_owned())?;
    if parsed.scheme() != "http" {
        return Err("must be an http:// URL (the component is on loopback)".into());
    }
    if parsed.path() != "/" || parsed.query().is_some() || !parsed.username().is_empty() {
        return Err("must be http://host:port, without a path, query or user".into());
    }
    let host = parsed.host_str().ok_or("must name a host")?;
    Ok(format!(
        "{host}:{}",
        parsed.port_or_known_default().unwrap_or(80)
    ))
}

impl Config {
    /// Settings that work but are probably a mistake, for `main` to log.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.has(Role::Consume) && self.shutdown_grace < self.job_timeout {
            warnings.push(format!(
                "--shutdown-grace ({:?}) is shorter than --job-timeout ({:?}): a drain may \
                 abandon a push that could still succeed (the job is then redelivered)",
                self.shutdown_grace, self.job_timeout
            ));
        }
        warnings
    }

    /// Whether `role` is enabled.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The dead-letter exchange's name.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.queue)
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// The brokers to connect to, in the order given, with the credential
    /// overrides applied. `Err` says what is wrong with the list, without
    /// echoing it (it may hold a password).
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, String> {
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(self.amqp_urls.len());
        for (n, url) in self.amqp_urls.iter().enumerate() {
            let url = url.trim();
            if url.is_empty() {
                return Err(format!("URL {} is empty (a stray comma?)", n + 1));
            }
            let mut uri: AMQPUri = url
                .parse()
                .map_err(|_| format!("URL {} is not an amqp:// or amqps:// URL", n + 1))?;
            // amq-protocol-uri reads the host as a domain name, and an IPv6
            // literal has none: it would connect to `localhost` instead.
            if let Some(v6) = reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .and_then(|h| h.strip_prefix('[')?.strip_suffix(']').map(str::to_owned))
            {
                uri.authority.host = v6;
            }
            if let Some(username) = &self.amqp_username {
                uri.authority.userinfo.username.clone_from(username);
            }
            if let Some(password) = &self.amqp_password {
                uri.authority.userinfo.password.clone_from(password);
            }
            let endpoint = Endpoint::new(uri);
            if endpoints
                .iter()
                .any(|e| e.label.eq_ignore_ascii_case(&endpoint.label))
            {
                return Err(format!("lists {} twice", endpoint.label));
            }
            endpoints.push(endpoint);
        }
        if endpoints.is_empty() {
            return Err("must name at least one broker".into());
        }
        Ok(endpoints)
    }

    /// Checks what clap can't: combinations and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |setting, reason: &str| {
            Err(ConfigError {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.roles.is_empty() {
            return fail(
                "--roles",
                "enable at least one of publish, consume, ingress",
            );
        }
        // AMQP short strings are at most 255 bytes, and `.dead` is appended.
        if self.queue.is_empty() || self.queue.len() > 200 {
            return fail("--queue", "must be 1 to 200 bytes long");
        }
        if self.concurrency == 0 {
            return fail("--concurrency", "must be at least 1");
        }
        if self.delivery_limit == 0 {
            return fail("--delivery-limit", "must be at least 1");
        }
        if self.has(Role::Consume) {
            match reqwest::Url::parse(&self.worker_url) {
                // The worker is in the same pod, on loopback; the push
                // client is built without TLS, so https:// could never work.
                Ok(url) if url.scheme() == "http" => {}
                _ => {
                    return fail(
                        "--worker-url",
                        "must be an http:// URL (the worker is on loopback; there is no TLS client)",
                    );
                }
            }
        }
        if self.has(Role::Ingress) {
            if let Err(reason) = upstream_addr(&self.producer_url) {
                return fail("--producer-url", &reason);
            }
            if self.ingress_max_in_flight == 0 {
                return fail("--ingress-max-in-flight", "must be at least 1");
            }
            let taken = [
                (self.has(Role::Publish), self.publish_addr),
                (true, self.admin_addr),
            ];
            if self.ingress_addr.port() != 0
                && taken
                    .iter()
                    .any(|(on, addr)| *on && *addr == self.ingress_addr)
            {
                return fail(
                    "--ingress-addr",
                    "must differ from --publish-addr and --admin-addr",
                );
            }
        }
        if self.max_publishes_in_flight == 0 {
            return fail("--max-publishes-in-flight", "must be at least 1");
        }
        if self.max_connections == 0 {
            return fail("--max-connections", "must be at least 1");
        }
        // AMQP carries the heartbeat as whole seconds in a u16; 0 would turn
        // dead-link detection off.
        if self.heartbeat < Duration::from_secs(1) || self.heartbeat.as_secs() > u16::MAX.into() {
            return fail("--heartbeat", "must be 1 s to 65535 s");
        }
        if let Err(reason) = self.endpoints() {
            return fail("--amqp-url", &reason);
        }
        if self.quorum_initial_group_size == Some(0) {
            return fail("--quorum-initial-group-size", "must be at least 1");
        }
        if self.has(Role::Publish)
            && self.publish_addr.port() != 0
            && self.publish_addr == self.admin_addr
        {
            return fail("--publish-addr", "must differ from --admin-addr");
        }
        for (setting, value) in [
            ("--job-timeout", self.job_timeout),
            ("--publish-timeout", self.publish_timeout),
            ("--queue-poll-interval", self.queue_poll_interval),
            ("--connect-timeout", self.connect_timeout),
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-read-timeout", self.body_read_timeout),
            ("--producer-timeout", self.producer_timeout),
        ] {
            if value.is_zero() {
                return fail(setting, "must be longer than zero");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("host-bridge").chain(args.iter().copied()))
            .expect("arguments parse")
    }

    #[test]
    fn defaults_run_both_roles_on_loopback_publish() {
        let config = parse(&[]);
        assert!(config.has(Role::Publish) && config.has(Role::Consume));
        assert!(config.publish_addr.ip().is_loopback());
        assert_eq!(config.concurrency, 1);
        assert_eq!(config.dead_letter_queue(), "jobs.dead");
        config.validate().expect("defaults are valid");
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    }

    #[test]
    fn a_grace_shorter_than_the_job_timeout_is_warned_about() {
        let config = parse(&["--shutdown-grace", "5s", "--job-timeout", "10s"]);
        assert_eq!(config.warnings().len(), 1);
        assert!(
            parse(&["--roles", "publish", "--shutdown-grace", "5s"])
                .warnings()
                .is_empty()
        );
    }

    #[test]
    fn roles_and_durations_parse() {
        let config = parse(&["--roles", "consume", "--job-timeout", "1500ms"]);
        assert_eq!(config.roles, vec![Role::Consume]);
        assert_eq!(config.job_timeout, Duration::from_millis(1500));
        assert!(Config::try_parse_from(["host-bridge", "--roles", "bogus"]).is_err());
    }

    #[test]
    fn several_brokers_parse_and_take_the_credential_overrides() {
        let config = parse(&[
            "--amqp-url",
            "amqp://a:1@n1:5672/%2f, amqp://n2:5673/%2f",
            "--amqp-username",
            "user",
            "--amqp-password",
            "p@ss:w/rd",
        ]);
        config.validate().expect("two brokers are valid");
        let endpoints = config.endpoints().expect("endpoints");
        let labels: Vec<_> = endpoints.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["n1:5672", "n2:5673"]);
        for endpoint in &endpoints {
            assert_eq!(endpoint.uri.authority.userinfo.username, "user");
            // Taken as is: no URL-encoding of a Secret's value.
            assert_eq!(endpoint.uri.authority.userinfo.password, "p@ss:w/rd");
        }
        // Without overrides each URL keeps its own credentials.
        let own = parse(&["--amqp-url", "amqp://a:1@n1/%2f,amqp://b:2@n2/%2f"]);
        let endpoints = own.endpoints().expect("endpoints");
        assert_eq!(endpoints[1].uri.authority.userinfo.username, "b");
        assert_eq!(endpoints[0].label, "n1:5672");
    }

    #[test]
    fn ip_literals_are_kept_and_labelled() {
        let config = parse(&[
            "--amqp-url",
            "amqp://[fd00::1]:5673/%2f,amqp://10.0.0.2/%2f",
        ]);
        let endpoints = config.endpoints().expect("endpoints");
        assert_eq!(endpoints[0].uri.authority.host, "fd00::1");
        assert_eq!(endpoints[0].label, "[fd00::1]:5673");
        assert_eq!(endpoints[1].label, "10.0.0.2:5672");
    }

    #[test]
    fn a_bad_broker_list_is_refused_without_echoing_it() {
        let err = parse(&["--amqp-url", "amqp://u:secret@n1/%2f,http://u:secret@n2"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "--amqp-url");
        assert!(err.reason.contains("URL 2"), "{}", err.reason);
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = parse(&["--amqp-url", "amqp://n1/%2f,amqp://n1:5672/%2f"])
            .validate()
            .unwrap_err();
        assert!(err.reason.contains("n1:5672 twice"), "{}", err.reason);
        let err = parse(&["--amqp-url", "amqp://n1/%2f,"])
            .validate()
            .unwrap_err();
        assert!(err.reason.contains("URL 2 is empty"), "{}", err.reason);
        let err = parse(&["--amqp-url", "amqp://N1/%2f,amqp://n1/%2f"])
            .validate()
            .unwrap_err();
        assert!(err.reason.contains("twice"), "{}", err.reason);
        let err = parse(&["--quorum-initial-group-size", "0"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "--quorum-initial-group-size");
    }

    #[test]
    fn a_value_that_does_not_parse_is_one_line_naming_the_flag() {
        for (args, names) in [
            (&["--roles", "bogus"][..], "--roles"),
            (&["--publish-timeout", "5"], "--publish-timeout"),
            (&["--concurrency", "abc"], "--concurrency"),
        ] {
            let err =
                Config::try_parse_from(std::iter::once("host-bridge").chain(args.iter().copied()))
                    .unwrap_err();
            let line = cli_contract::one_line(&err);
            assert!(!line.contains('\n') && line.contains(names), "{line}");
            assert!(!line.starts_with("error:"), "{line}");
        }
    }

    #[test]
    fn bad_combinations_name_the_setting() {
        let err = parse(&["--concurrency", "0"]).validate().unwrap_err();
        assert_eq!(err.setting, "--concurrency");
        for bad in ["ftp://x", "https://127.0.0.1:3001/"] {
            let err = parse(&["--worker-url", bad]).validate().unwrap_err();
            assert_eq!(err.setting, "--worker-url", "{bad}");
        }
        let err = parse(&["--amqp-url", "http://x"]).validate().unwrap_err();
        assert_eq!(err.setting, "--amqp-url");
        let err = parse(&["--publish-addr", "0.0.0.0:9090"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "--publish-addr");
        let err = parse(&["--roles", "publish,ingress", "--producer-url", "http://h/x"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "--producer-url");
        let err = parse(&["--roles", "ingress", "--ingress-addr", "0.0.0.0:9090"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "--ingress-addr");
        parse(&["--roles", "publish,consume,ingress"])
            .validate()
            .expect("all three roles with their defaults are valid");
        // A consume-only bridge doesn't care about the worker URL's clash.
        parse(&["--roles", "publish", "--worker-url", "nope"])
            .validate()
            .expect("publish role ignores the worker URL");
    }
}
