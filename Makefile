# Every task of the project. `make` lists them.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
WASM_TARGET ?= wasm32-wasip2
AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/%2f
WASMTIME_VERSION ?= 48.0.8
TOOLS ?= $(CURDIR)/.tools
WORK_DURATION_MS ?= 5000
K8S_FLOOR ?= 1.30.0
K8S_VERSION ?= 1.37.0

export AMQP_URL

# wasmtime-cli at the pinned version: the one on PATH if it matches, else a
# per-user install under ~/.cache, built once (minutes) and shared by every
# clone of the project, as cargo shares its registry.
# Only the features `wasmtime serve -Scli` needs: no Winch, Pulley, GC,
# debugger, wast, wizer, wasi-nn or disassemblers. See docs/RUNNING.md, "Local runtimes",
# for the cold install times.
WASMTIME_FEATURES ?= run,serve,component-model-async,cranelift,cache,parallel-compilation,clap/default
WASMTIME_ROOT ?= $(HOME)/.cache/wasm-jobs/wasmtime-$(WASMTIME_VERSION)-serve
WASMTIME := $(shell command -v wasmtime >/dev/null 2>&1 && wasmtime --version | grep -q ' $(WASMTIME_VERSION) ' && echo wasmtime || echo $(WASMTIME_ROOT)/bin/wasmtime)

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^##@/ {printf "\n%s\n", substr($$0, 5)} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Set-up

.PHONY: wasm-target
wasm-target: ## Add the wasm32-wasip2 Rust target if missing
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

.PHONY: test-tools
test-tools: ## Install what the tests need besides RabbitMQ: Prometheus, buildah (kubectl must be there)
	@scripts/test-tools.sh

.PHONY: rabbitmq
rabbitmq: ## Make sure RabbitMQ answers at AMQP_URL (start or install it locally)
	@scripts/rabbitmq.sh

.PHONY: wasmtime
wasmtime: ## Install wasmtime-cli $(WASMTIME_VERSION) under ~/.cache unless it is on PATH
	@if [ "$(WASMTIME)" = wasmtime ] || [ -x "$(WASMTIME_ROOT)/bin/wasmtime" ]; then \
	  echo "wasmtime: $$($(WASMTIME) --version)"; \
	else \
	  echo "wasmtime: building wasmtime-cli $(WASMTIME_VERSION) with only what serve needs (about 5 min on 2 cores, once per machine)"; \
	  $(CARGO) install wasmtime-cli --version $(WASMTIME_VERSION) --locked \
	    --no-default-features --features $(WASMTIME_FEATURES) --root $(WASMTIME_ROOT) --target-dir target/tools; \
	fi

##@ Build

.PHONY: wasm
wasm: wasm-target ## Build the producer and worker components (.wasm)
	$(CARGO) build -p producer -p worker --target $(WASM_TARGET) --release

.PHONY: bridge
bridge: ## Build host-bridge (release)
	$(CARGO) build -p host-bridge --release

.PHONY: build
build: wasm bridge ## Build everything

##@ Run

.PHONY: up
up: build rabbitmq ## Run the local path: RabbitMQ, host-bridge, components (spin, else wasmtime serve)
	@command -v spin >/dev/null 2>&1 || $(MAKE) --no-print-directory wasmtime
# up.sh gets SIGTERM (an ordered stop) if make itself dies, however it dies.
	WASMTIME=$(WASMTIME) WORK_DURATION_MS=$(WORK_DURATION_MS) $$(command -v setpriv >/dev/null && echo setpriv --pdeathsig TERM) scripts/up.sh

##@ Images

REGISTRY ?= ghcr.io/example
TAG ?= 0.1.0

.PHONY: images
images: wasm ## Build the component images (FROM scratch, wasi/wasm) with buildah; OCI layouts in target/images
	REGISTRY=$(REGISTRY) TAG=$(TAG) scripts/build-images.sh

.PHONY: image-bridge
image-bridge: ## Build host-bridge's image (static musl binary, distroless nonroot); needs a registry to pull bases
	REGISTRY=$(REGISTRY) TAG=$(TAG) BRIDGE=1 scripts/build-images.sh

.PHONY: push
push: images image-bridge ## Push the images to $(REGISTRY): three, plus the components' Wasm artifacts (wasm-jobs-*-wasm, with skopeo)
	@for n in producer worker host-bridge; do \
	  buildah --storage-driver vfs --root target/buildah/root --runroot target/buildah/run push $(REGISTRY)/wasm-jobs-$$n:$(TAG); done
	@for n in producer worker; do \
	  skopeo copy oci:target/images/$$n-wasm:$(TAG) docker://$(REGISTRY)/wasm-jobs-$$n-wasm:$(TAG); done

.PHONY: spin-push
spin-push: wasm ## The alternative: `spin registry push` each component's app (needs spin)
	cd components/producer && ln -sf ../../target/wasm32-wasip2/release/producer.wasm . && spin registry push $(REGISTRY)/wasm-jobs-producer:$(TAG)
	cd components/worker && ln -sf ../../target/wasm32-wasip2/release/worker.wasm . && spin registry push $(REGISTRY)/wasm-jobs-worker:$(TAG)

##@ Deploy

# The broker `make deploy` runs. single: the one-node StatefulSet in
# manifests/, which fits a one-node laptop cluster. ha: three RabbitMQ nodes
# (manifests/overlays/ha), which need the RabbitMQ Cluster Operator and three
# schedulable nodes.
BROKER ?= single
# The operator's release. Since v2.22.0 its cluster-operator.yml holds an
# admission webhook whose certificate comes from cert-manager (an Issuer and
# Certificates), so cert-manager goes first; v1.20 supports Kubernetes 1.32-1.35.
RABBITMQ_OPERATOR_VERSION ?= v2.22.3
CERT_MANAGER_VERSION ?= v1.20.2
# The Wasm shim the nodes run: spin (containerd-shim-spin, the default) or
# wasmtime (runwasi's containerd-shim-wasmtime; runtime-class/README.md).
SHIM ?= spin
APP_MANIFESTS := $(if $(filter ha,$(BROKER)),manifests/overlays/ha,$(if $(filter wasmtime,$(SHIM)),manifests/overlays/wasmtime,manifests))

.PHONY: deploy
deploy: ## helm install the Prometheus stack and adapter; apply runtime-class/ and the app (BROKER=single|ha, SHIM=spin|wasmtime)
	@case "$(BROKER)" in single|ha) ;; *) echo "deploy: BROKER must be single or ha, not $(BROKER)" >&2; exit 2;; esac
	@case "$(SHIM)" in spin|wasmtime) ;; *) echo "deploy: SHIM must be spin or wasmtime, not $(SHIM)" >&2; exit 2;; esac
	@if [ "$(BROKER)" = ha ] && [ "$(SHIM)" = wasmtime ]; then \
	  echo "deploy: BROKER=ha with SHIM=wasmtime has no ready overlay; add components: [../../components/wasmtime-shim] and the -wasm images to overlays/ha" >&2; exit 2; fi
# Both brokers own a Service named rabbitmq, whose selector would take in the
# other's pods: switching takes `make undeploy` with the old BROKER first.
	@if [ "$(BROKER)" = ha ]; then other=statefulset/rabbitmq; else other=rabbitmqcluster/rabbitmq; fi; \
	  if kubectl -n wasm-jobs get "$$other" >/dev/null 2>&1; then \
	    echo "deploy: $$other (the other broker) is deployed; run make undeploy with its BROKER first" >&2; exit 1; fi
	@if [ "$(BROKER)" = ha ]; then $(MAKE) --no-print-directory ha-operator; fi
	helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
	helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
	  --namespace monitoring --create-namespace -f manifests/helm/kube-prometheus-stack.values.yaml --wait
	helm upgrade --install prometheus-adapter prometheus-community/prometheus-adapter \
	  --namespace monitoring -f manifests/helm/prometheus-adapter.values.yaml --wait
	kubectl apply -k runtime-class/
	kubectl apply -k $(APP_MANIFESTS)

.PHONY: ha-operator
ha-operator: ## cert-manager, then the RabbitMQ Cluster Operator, at the pinned releases (deploy BROKER=ha runs it)
	kubectl apply -f https://github.com/cert-manager/cert-manager/releases/download/$(CERT_MANAGER_VERSION)/cert-manager.yaml
	kubectl -n cert-manager wait --for=condition=Available deployment --all --timeout=5m
# cert-manager's webhook can refuse the operator's Certificate for a few
# seconds after it is Available (its own CA is injected later); apply is
# idempotent, so retry it, within a bound.
	timeout 2m bash -c 'until kubectl apply -f https://github.com/rabbitmq/cluster-operator/releases/download/$(RABBITMQ_OPERATOR_VERSION)/cluster-operator.yml; do sleep 5; done'
	kubectl -n rabbitmq-system rollout status deploy/rabbitmq-cluster-operator --timeout=5m
# The operator's webhooks (failurePolicy Fail) refuse every RabbitmqCluster
# until cert-manager has injected their CA bundle.
	timeout 2m bash -c 'for w in mutating validating; do \
	  until kubectl get $${w}webhookconfiguration cluster-operator-$${w}-webhook-configuration -o jsonpath="{.webhooks[0].clientConfig.caBundle}" | grep -q .; do sleep 2; done; done'

.PHONY: deploy-keda
deploy-keda: ## The KEDA alternative (instead of prometheus-adapter): scales to zero
	helm repo add kedacore https://kedacore.github.io/charts --force-update
	helm upgrade --install keda kedacore/keda --namespace keda --create-namespace --wait
	kubectl apply -k runtime-class/
	kubectl apply -k manifests/overlays/keda/

.PHONY: undeploy
undeploy: ## Remove the app (keeps the Helm releases and the operator); BROKER=ha also deletes the cluster's volumes
	kubectl delete -k $(APP_MANIFESTS) --ignore-not-found

##@ Test

.PHONY: test
test: check-make wasm rabbitmq wasmtime test-tools lint manifests-check images ## Lint, check manifests, then every test against the real RabbitMQ, .wasm and wasmtime serve
	$(CARGO) build -p host-bridge
# The memory tests measure the shipped (release) binary, as `make up` runs it.
	$(CARGO) build --release -p host-bridge
	@mkdir -p target
	WASMTIME=$(WASMTIME) $(CARGO) test --workspace --exclude producer --exclude worker --lib --bins --tests -- --show-output 2>&1 | tee target/test.log
	$(CARGO) build -p bench
	@target/debug/bench --smoke --bridge target/debug/host-bridge > target/bench-smoke.log 2>&1 || { cat target/bench-smoke.log; exit 1; }
	@echo "bench: smoke run OK (target/bench-smoke.md)"
	@awk '/^test result:/ { passed += $$4; failed += $$6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' target/test.log

.PHONY: test-fast
test-fast: lint ## The inner loop: rustfmt, clippy and the unit tests; no services, no .wasm (make test is the complete one)
	$(CARGO) test --workspace --exclude producer --exclude worker --lib --bins

.PHONY: manifests-check
manifests-check: ## Build every kustomization; strict schema checks at the floor $(K8S_FLOOR) and $(K8S_VERSION), CRDs included
	K8S_FLOOR=$(K8S_FLOOR) K8S_VERSION=$(K8S_VERSION) scripts/check-manifests.sh

.PHONY: lint
lint: wasm-target ## rustfmt and clippy, native and wasm32-wasip2
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy -p producer -p worker --target $(WASM_TARGET) -- -D warnings

.PHONY: check-make
check-make: ## Dry-run every target, to catch Makefile drift
ifndef CHECK_MAKE_NESTED
	@for t in wasm-target rabbitmq test-tools wasmtime wasm bridge build up images image-bridge push spin-push deploy ha-operator deploy-keda undeploy test test-fast lint manifests-check bench bench-smoke clean; do \
	  $(MAKE) -n CHECK_MAKE_NESTED=1 $$t >/dev/null || { echo "make -n $$t failed"; exit 1; }; done; echo "make: targets parse"
endif

##@ Bench

.PHONY: bench
bench: wasm rabbitmq wasmtime ## Benchmarks on release builds, components under wasmtime serve; writes docs/BENCHMARKS.md
	$(CARGO) build --release -p host-bridge -p bench
	WASMTIME=$(WASMTIME) target/release/bench --bridge target/release/host-bridge

.PHONY: bench-smoke
bench-smoke: wasm rabbitmq ## The benchmark harness with tiny counts (part of make test; no figures kept)
	$(CARGO) build -p host-bridge -p bench
	target/debug/bench --smoke --bridge target/debug/host-bridge

##@ Clean

.PHONY: clean
clean: ## Remove build output
	$(CARGO) clean
