# The two commands of the README are `make demo` and `make test`; everything else is a step of theirs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= /usr/bin/python3
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
COLLECTIONS := $(CURDIR)/.ansible/collections
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_LOCAL_TEMP := $(CURDIR)/.ansible/tmp
export PATH := $(BIN):$(PATH)
export NSBOX_PYTHON := $(BIN)/python

.PHONY: help deps test-deps demo teardown test lint sanity unit integration ansible-lint molecule vm build bench

help:
	@echo "make demo      install what is needed, deploy nginx in namespaces on this host"
	@echo "make teardown  remove everything the demo made"
	@echo "make test      install what is needed, run every test"

deps:
	tools/install-deps.sh runtime

test-deps:
	tools/install-deps.sh test

demo: deps
	tools/demo.sh deploy

teardown: deps
	tools/demo.sh teardown

test: test-deps
	tools/run-tests.sh

# Single steps, for developers; each assumes `make test-deps` ran once.
lint:
	tools/run-tests.sh lint
sanity:
	tools/run-tests.sh sanity
unit:
	tools/run-tests.sh unit
integration:
	tools/run-tests.sh integration
ansible-lint:
	tools/run-tests.sh ansible-lint
molecule:
	tools/run-tests.sh molecule
vm:
	tools/run-tests.sh vm

build: deps
	$(BIN)/ansible-galaxy collection build --force --output-path build/

bench: test-deps
	tools/run-bench.sh
