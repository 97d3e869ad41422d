# Skynet: `make demo` runs the main job, `make test` runs every test. Both install what they need.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(CURDIR)/.tools/bin:$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.build/collections
export CONTAINERS_CONF := $(CURDIR)/tests/harness/containers.conf

.PHONY: deps demo demo-down test lint sanity unit integration molecule build collection-link clean

deps: ## install Debian packages, Consul, Prometheus (consul_sd build), Podman config, the venv
	@bash scripts/deps.sh

demo: deps collection-link ## elastic scaling under load on loopback; KEEP=1 keeps the stack up
	@.venv/bin/python scripts/demo.py $(if $(KEEP),--keep)

demo-down: ## stops a demo started with KEEP=1
	@if [ -f demo-out/demo.pid ]; then kill "$$(cat demo-out/demo.pid)" && echo "demo stopping"; else echo "no demo running"; fi

collection-link:
	@mkdir -p .build/collections/ansible_collections/cyberdyne
	@ln -sfn ../../../.. .build/collections/ansible_collections/cyberdyne/skynet

test: deps collection-link ## lint, sanity, unit, integration, build; a summary line at the end
	@bash scripts/test.sh

lint: collection-link
	@bash scripts/test.sh lint

sanity:
	@bash scripts/test.sh sanity

unit: collection-link
	@bash scripts/test.sh unit

integration: collection-link
	@bash scripts/test.sh integration

molecule: collection-link ## the roles' molecule scenarios in systemd containers
	@bash scripts/test.sh molecule

build: ## the collection tarball, installed once to prove ansible-galaxy accepts it
	@bash scripts/test.sh build

clean:
	rm -rf .build .cache tests/output .pytest_cache .ruff_cache cyberdyne-skynet-*.tar.gz
