# hotstandby: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages the tests and the demo run for real; installed only when missing.
# buildah and mmdebstrap build the image without a Docker engine (make image, tests/image/); uidmap
# gives buildah newuidmap/newgidmap when it runs as a user other than root.
SYSTEM_PACKAGES := haproxy redis-server postgresql iproute2 rsync lsyncd prometheus docker-compose tini openssh-server \
	chromium chromium-driver util-linux mount e2fsprogs buildah mmdebstrap uidmap
SYSTEM_COMMANDS := haproxy redis-server pg_ctlcluster ip rsync lsyncd promtool docker-compose tini chromium chromedriver losetup fsfreeze mkfs.ext4 \
	buildah mmdebstrap newuidmap

.PHONY: install system-deps bytecode test lint demo demo-image image image-sizes up down clean bench chaos

install: system-deps $(STAMP)

# The daemons the tests, the demo and the benchmark start run from compiled bytecode, as an installed
# hotstandby does (the image runs compileall): under PYTHONDONTWRITEBYTECODE=1 a checkout's modules would
# be compiled again at every start (0.1-0.2 s of each). Up-to-date files are skipped.
bytecode: install
	$(BIN)/python -m compileall -q daemon replication harness

system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgres"; \
	test -x /usr/sbin/sshd || missing="$$missing sshd"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages (missing:$$missing)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "hotstandby needs Python >= 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

# Most tests wait on real processes, sockets and timers rather than on the CPU: three workers (whole files
# each, so a file's fixtures stay together) then, alone, the few that change machine-wide state.
TEST_WORKERS ?= 3
test: bytecode
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" --durations=20
	$(BIN)/pytest -m serial

lint: install
	$(BIN)/ruff check daemon replication harness tests scripts bench
	$(BIN)/ruff format --check daemon replication harness tests scripts bench
	$(BIN)/mypy

# compose/docker-compose.yml without Docker (harness/compose_runner.py): a network namespace per service
# (or 127.x.y.n addresses where namespaces are not permitted). `demo` runs a failover and tears down;
# `up` leaves the services running (state, logs and volumes in compose/.run/) until `down`.
demo: bytecode
	$(BIN)/python -m harness.compose demo

# The image (compose/Dockerfile): `docker build` when a Docker engine answers, else buildah in a store of
# the project's own (~/.cache/hotstandby/containers), on python:3.11-slim-bookworm or, when that cannot be
# pulled, an equivalent Debian base made once with mmdebstrap (harness/image.py). Targets: hotstandby:<version>
# (the daemon) and hotstandby:<version>-drill (plus the drill's plot). `demo-image` runs the demo from the
# daemon image's own files.
image: install
	$(BIN)/python -m harness.image build --target daemon --target drill

image-sizes: install
	$(BIN)/python -m harness.image sizes

demo-image: install
	$(BIN)/python -m harness.compose demo --image

up: bytecode
	$(BIN)/python -m harness.compose up

down: install
	$(BIN)/python -m harness.compose down

# Not part of `make test`: hotstandby against lsyncd and rsync (see bench/run.py --help; --quick for a smoke run).
bench: bytecode
	$(BIN)/python bench/run.py

# Not part of `make test` (which runs a 2-minute version): random faults for CHAOS_DURATION seconds against a
# pair, Redis and HAProxy in network namespaces, then the checks (tests/chaos/runner.py; needs root).
# CHAOS_SEED replays a run. Results in chaos-results/<time>/.
CHAOS_DURATION ?= 600
chaos: bytecode
	$(BIN)/python -m tests.chaos.runner --duration $(CHAOS_DURATION) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
