# ami-factory: every target installs what it needs first, so a fresh Debian 12 machine
# (as root) needs nothing but `make demo` or `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
FACTORY := $(VENV)/bin/factory
APT_PACKAGES := packer openssh-server debootstrap util-linux iproute2 git
STATE := .factory
PYTEST_ARGS ?=
# two workers: the integration tier in one (one local cloud, in order), unit tests in both
PYTEST_XDIST ?= -n 2 --dist loadgroup

.PHONY: setup system venv demo test test-unit lint bench clean

setup: system venv

# apt packages, only when something is missing
system:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing (run as root or install them)"; exit 2; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# the virtualenv, rebuilt only when pyproject.toml changes
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing the virtualenv $(VENV) (log: $(VENV)/install.log)"
	@$(PY) -m pip install -q --upgrade pip > $(VENV)/install.log 2>&1 || true
	@$(PY) -m pip install -q -e '.[dev]' >> $(VENV)/install.log 2>&1 || { tail -20 $(VENV)/install.log; exit 1; }
	@$(PY) -c "import factory" && touch $@

demo: setup
	@bash infra/demo.sh

test: setup
	$(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check factory tests bench
	$(VENV)/bin/ruff format --check factory tests bench
	$(VENV)/bin/mypy

bench: setup
	for b in cli localcloud refresh build verify provenance rollout retire; do echo "== bench.$$b"; $(PY) -m bench.$$b || exit 1; done

clean:
	-$(FACTORY) local down --state-dir $(STATE)/local 2>/dev/null
	rm -rf $(STATE)/builds

# the factory's own IAM policies (CloudFormation), generated from the stages' PERMISSIONS
.PHONY: infra
infra: venv
	$(PY) -m factory.iam > infra/factory-iam.json.tmp
	mv infra/factory-iam.json.tmp infra/factory-iam.json
