# farmhand: `make run` runs the example task, `make test` runs the whole suite.
# Both set up a fresh Debian 12 host as root (packages, dockerd, local images).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test unit integration bench host test-images venv clean

# The dependencies exactly as locked (worker/requirements-test.lock: the
# worker's lock plus the test tools, every file hash-checked), then farmhand
# itself without resolving anything again.
$(VENV)/.installed: pyproject.toml worker/requirements.lock worker/requirements-test.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r worker/requirements-test.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: host $(VENV)/.installed

host:
	bash scripts/setup-host.sh

test-images: host
	bash scripts/build-test-images.sh

run: test-images venv
	bash scripts/run-example.sh

test: test-images venv
	$(PY) -m pytest tests/unit tests/integration $(PYTEST_ARGS)

# Re-resolve the locks after a change to pyproject.toml's dependencies (needs
# PyPI): the worker's (used by make, the farmhand role's wheelhouse and so the
# Packer app image) and, on top of it, the test tools'. uv runs from its own venv.
LOCK_VENV ?= build/lock-venv
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" -q

.PHONY: lock
lock:
	[ -x $(LOCK_VENV)/bin/uv ] || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q 'uv>=0.4'; }
	$(UV_COMPILE) -o worker/requirements.lock
	$(UV_COMPILE) --extra test -c worker/requirements.lock -o worker/requirements-test.lock

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: test-images venv
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# Figures, not tests: every bench script, one table, bench/results/latest.json (bench/README.md).
bench: test-images venv
	$(PY) bench/run_all.py $(BENCH_ARGS)

# Packer images (packer/README.md) and the Debian VM image they and molecule's
# vm scenario boot. `images`: docker base then app; `vm-images`: qemu base then
# app (software emulation, slow: see packer/README.md for timings).
PACKER := PACKER_CACHE_DIR=$(CURDIR)/build/packer_cache CHECKPOINT_DISABLE=1 packer
PACKER_BUILD := $(PACKER) build -color=false -timestamp-ui -force

.PHONY: packer-tools packer-validate vm-image images vm-images images-test vm-images-test

packer-tools:
	bash scripts/setup-packer-tools.sh
	bash scripts/setup-appliance-tools.sh

packer-validate: packer-tools venv
	$(PY) -m pytest tests/integration/test_packer.py tests/integration/test_vagrant.py $(PYTEST_ARGS)

vm-image: packer-tools
	bash scripts/build-vm-image.sh

images: host packer-tools
	bash scripts/build-systemd-image.sh
	mkdir -p build/packer
	$(PACKER_BUILD) -only=docker.debian12 packer/base
	$(PACKER_BUILD) -only=docker.debian12 packer/app

vm-images: vm-image
	mkdir -p build/packer
	$(PACKER_BUILD) -only=qemu.debian12 packer/base
	$(PACKER_BUILD) -only=qemu.debian12 packer/app

# The worker as a container (README.md): a debootstrap'd Debian 12 base (cached
# by tag), the locked wheelhouse, worker/container/Containerfile.
.PHONY: worker-image
worker-image: test-images venv
	bash scripts/build-worker-image.sh

# images-test runs the docker app image and the worker container (a task to
# SFTP, a killed worker container replaced); vm-images-test boots the qemu app
# image (slow: software emulation). Each builds its images first.
images-test: images worker-image venv
	$(PY) -m pytest tests/appliance/test_images.py -k docker_app $(PYTEST_ARGS)
	$(PY) -m pytest tests/appliance/test_worker_container.py $(PYTEST_ARGS)

vm-images-test: vm-images venv
	$(PY) -m pytest tests/appliance/test_images.py -k vm_ $(PYTEST_ARGS)

# Ansible roles (ansible/) proven by molecule (molecule/, see molecule/README.md).
# `molecule`: lint, then every scenario: default (a systemd container, minutes),
# vm and vm-nodisks (qemu VMs under software emulation, slower).
APPLIANCE_VENV ?= .venv-appliance
APPLIANCE_BIN := $(CURDIR)/$(APPLIANCE_VENV)/bin
MOLECULE := PATH=$(APPLIANCE_BIN):$$PATH molecule

.PHONY: appliance-tools lint-ansible molecule molecule-default molecule-vm molecule-vm-nodisks

# ansible/requirements.yml: the `ansible` package installed the collections
# already; this finds them in range and does nothing (Galaxy is not contacted).
appliance-tools: host
	bash scripts/setup-appliance-tools.sh
	$(APPLIANCE_BIN)/ansible-galaxy collection install -r ansible/requirements.yml \
	  -p "$$($(APPLIANCE_BIN)/python -c 'import ansible_collections, os; print(os.path.dirname(ansible_collections.__path__[0]))')"

lint-ansible: appliance-tools
	$(APPLIANCE_BIN)/yamllint -c .yamllint.yml ansible molecule
	PATH=$(APPLIANCE_BIN):$$PATH ansible-lint --profile production ansible/ molecule/
	cd ansible && $(APPLIANCE_BIN)/ansible-playbook --syntax-check site.yml

molecule-default: appliance-tools
	bash scripts/build-systemd-image.sh
	$(MOLECULE) test -s default

molecule-vm: appliance-tools
	bash scripts/build-vm-image.sh
	$(MOLECULE) test -s vm

molecule-vm-nodisks: appliance-tools
	bash scripts/build-vm-image.sh
	$(MOLECULE) test -s vm-nodisks

molecule: lint-ansible molecule-default molecule-vm molecule-vm-nodisks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis var
