# The README's two commands: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := hack/pytest

.PHONY: bench help deps lint test test-fast coverage-fast test-unit test-kube demo demo-down cluster-up cluster-down clean

help:
	@echo "make demo       local control plane up, show it working (see README)"
	@echo "make test       install what is missing, lint, run every test"
	@echo "make bench      provisioning + Ganesha benchmarks (prints a table, writes bench/results.json)"
	@echo "make lint       ruff + mypy (strict on nfs_provisioner/) + the layer contracts (hack/check_layers.py)"
	@echo "make test-fast  the fast lane: unit tests, no root, no servers, under 90 s (after make deps once)"
	@echo "make coverage-fast  the fast lane under coverage.py: line coverage of controller/ and ganesha/exports/"
	@echo "make test-unit | test-kube   one marker group only"

deps:
	hack/install-deps

lint: deps
	$(VENV)/bin/ruff check nfs_provisioner tests bench hack/cluster hack/helm hack/cluster_node.py hack/node_host.py hack/node_image.py hack/check_layers.py examples
	$(VENV)/bin/mypy --strict examples/hostpath/hostpath_provisioner.py hack/check_layers.py bench/provision_bench.py bench/harness.py bench/pool_bench.py bench/delete_bench.py bench/backlog_bench.py bench/step_timer.py bench/scale_bench.py bench/failover_bench.py bench/filesystem_bench.py bench/flame.py bench/fsync_bench.py
	$(VENV)/bin/mypy
	$(PY) hack/check_layers.py

test: deps lint
	$(PYTEST) tests

# The fast lane: no deps run (the virtualenv must exist), no root needed, no server started.
FAST := -m "unit and not root" -q -p no:cacheprovider tests

test-fast:
	@test -x $(PY) || { echo "make test-fast: no $(PY); run make deps once"; exit 1; }
	$(PYTEST) $(FAST) -n auto --maxprocesses=4

coverage-fast:
	@test -x $(VENV)/bin/coverage || { echo "make coverage-fast: no coverage in $(VENV); run make deps once"; exit 1; }
	$(VENV)/bin/coverage erase
	$(VENV)/bin/coverage run --source=nfs_provisioner -m pytest $(FAST)
	$(VENV)/bin/coverage report --include='nfs_provisioner/controller/*,nfs_provisioner/ganesha/exports/*' --omit='*/testing.py'

test-unit: deps
	$(PYTEST) -m unit tests

test-kube: deps
	$(PYTEST) -m kube tests

demo: deps
	hack/demo $(ARGS)

demo-down:
	hack/demo-down

cluster-up: deps
	hack/cluster up

cluster-down:
	hack/cluster down

clean: cluster-down
	rm -rf _output

# Ganesha manager: its tests alone, and its benchmark (printed; see README "Ganesha manager").
.PHONY: test-ganesha bench-ganesha
test-ganesha: deps
	$(PYTEST) -m ganesha tests

bench-ganesha: deps
	$(PY) bench/ganesha_bench.py

# Benchmarks print their figures (bench/results.json); they are not part of make test.
bench: deps
	$(PY) -m bench.provision_bench
	$(PY) bench/ganesha_bench.py
	$(PY) -m bench.clone_bench
