# Deployment checks (included from the Makefile: `include deploy/deploy.mk`).
#
#   make deploy-check    hadolint + build context, compose, Kubernetes manifests, promtool
#   make deploy-tools    Debian's prometheus package (prometheus + promtool), if missing
#
# The real-Prometheus test lives in tests/deploy and runs with the normal pytest run; it needs
# the binaries that deploy-tools installs.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deploy-check deploy-tools deploy-check-dockerfile deploy-check-compose \
	deploy-check-k8s deploy-check-prometheus

deploy-tools:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			prometheus >/dev/null; }
	@prometheus --version 2>&1 | head -1

deploy-check-dockerfile: install-all
	$(PY) -m deploy.checks.dockerfile

deploy-check-compose: install-all
	$(PY) -m deploy.checks.compose

deploy-check-k8s: install-all
	$(PY) -m deploy.checks.k8s

deploy-check-prometheus: install-all deploy-tools
	$(PY) -m deploy.checks.prometheus

deploy-check: deploy-check-dockerfile deploy-check-compose deploy-check-k8s deploy-check-prometheus
