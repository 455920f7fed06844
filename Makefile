# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a step of theirs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: venv kernels sparkplug-proto sparkplug-decoders mosquitto mbpoll postgresql chromium fuse container-tools qemu-user lint test unit integration e2e demo bench clean

# The venv is rebuilt when the dependencies change; constraints.txt pins what the suite was run with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The kernels compiled ahead of time (agent/detect/kernels/jit.py): without them the agent imports
# numba, about 120 MiB more. Does nothing when they are built for the current source; a new
# clone takes them from the cache the packaging builds share (a minute and a half saved).
kernels: venv
	cache=$$(packaging/kernel-cache.sh dir dev-$(HOST_ARCH) $(BIN)/python) && \
	packaging/kernel-cache.sh restore "$$cache" agent/detect/kernels && \
	$(BIN)/python -m agent.detect.kernels.build && \
	packaging/kernel-cache.sh save "$$cache" agent/detect/kernels

# The Sparkplug B payload module, generated from the official .proto beside it by grpcio-tools'
# protoc and committed; tests/unit/test_sparkplug_codec.py fails when it is out of date.
SPB := agent/uplink/sparkplug
sparkplug-proto: venv
	$(BIN)/python -m grpc_tools.protoc -I $(SPB) --python_out=$(SPB) --pyi_out=$(SPB) $(SPB)/sparkplug_b.proto

# The independent Sparkplug decoders of tests/e2e/test_sparkplug.py, outside the repository:
# Eclipse Tahu's sparkplug-payload (npm) and pysparkplug (PyPI, in a venv of its own: it needs
# paho-mqtt 1). The test's set-up installs them the same way when this target was skipped.
sparkplug-decoders: venv
	$(BIN)/python -c 'from agent.testing.sparkplug_peers import install; install()'

# The tests and the demo start Mosquitto brokers of their own; only the binary is needed.
mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  echo "installing mosquitto from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto; \
	fi

# mbpoll (libmodbus) reads the simulator in the interoperability test; its fixture installs
# it too when this target was skipped.
mbpoll:
	@if ! command -v mbpoll >/dev/null 2>&1; then \
	  echo "installing mbpoll from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mbpoll; \
	fi

# The fleet side's tests start PostgreSQL servers of their own (initdb, pg_ctl): only the
# server's binaries are needed.
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
	  echo "installing postgresql from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql; \
	fi

# The fleet view's test drives Debian's Chromium headless through its chromedriver.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi

# fuse3 (fusermount3, libfuse3) for the store's power-cut test (tests/powercut/lazyfs.py, a FUSE
# file system that loses what was not fsync'ed); the test skips, saying why, without it.
fuse:
	@if ! command -v fusermount3 >/dev/null 2>&1 || ! ldconfig -p | grep -q libfuse3.so.3; then \
	  echo "installing fuse3 from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq fuse3 libfuse3-dev; \
	fi

# The systemd container and the emulated arm64 root of the packaging tests
# (tests/e2e/test_systemd_container.py, test_arm64.py; packaging/README.md): debootstrap
# makes the roots, systemd-nspawn boots one.
container-tools:
	@if ! command -v debootstrap >/dev/null 2>&1 || ! command -v systemd-nspawn >/dev/null 2>&1; then \
	  echo "installing debootstrap and systemd-container from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq debootstrap systemd-container; \
	fi

# arm64 programs run here under qemu-user-static, which binfmt_misc must know (mounted
# first where it is not). A machine that refuses it only skips the arm64 tests.
qemu-user:
	@if ! command -v qemu-aarch64-static >/dev/null 2>&1 || ! command -v update-binfmts >/dev/null 2>&1; then \
	  echo "installing qemu-user-static and binfmt-support from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq qemu-user-static binfmt-support; \
	fi
	@if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then \
	  { [ -e /proc/sys/fs/binfmt_misc/status ] || $(SUDO) mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; } \
	  && $(SUDO) update-binfmts --enable qemu-aarch64 \
	  || echo "qemu-user: binfmt_misc refused qemu-aarch64: the arm64 tests will be skipped"; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: venv kernels sparkplug-decoders mosquitto mbpoll postgresql chromium fuse container-tools qemu-user lint
	$(BIN)/pytest

unit: venv kernels
	$(BIN)/pytest tests/unit

integration: venv kernels mosquitto mbpoll postgresql fuse
	$(BIN)/pytest tests/integration

e2e: venv kernels sparkplug-decoders mosquitto postgresql chromium container-tools qemu-user
	$(BIN)/pytest tests/e2e

demo: venv kernels mosquitto postgresql
	$(BIN)/python tools/demo.py

# The benchmarks (about 10 minutes): bench/results/*.md, explained in bench/README.md, and
# their headline numbers in one table, bench/results/latest.md (bench/summary.py); the
# system one installs ThingsBoard IoT Gateway once into bench/.cache/tb-venv.
# mosquitto_pub (Debian's mosquitto-clients) is the store benchmark's replay baseline.
bench: venv kernels mosquitto
	@if ! command -v mosquitto_pub >/dev/null 2>&1; then \
	  echo "installing mosquitto-clients from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto-clients; \
	fi
	$(BIN)/python bench/store/run.py --output bench/results/store.md
	$(BIN)/python bench/startup/run.py --output bench/results/startup.md
	$(BIN)/python bench/modbus/run.py --output bench/results/modbus.md
	$(BIN)/python bench/system/run.py --output bench/results/system.md
	$(BIN)/python bench/detect/run.py --output bench/results/detect.md
	$(BIN)/python bench/opcua/run.py --output bench/results/opcua.md
	$(BIN)/python bench/condense/run.py --output bench/results/condense.md
	$(BIN)/python bench/summary.py --output bench/results/latest.md

clean:
	rm -rf $(VENV) agent/detect/kernels/_aot_*.so .demo .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The Debian package dist/edge-agent_<version>_<arch>.deb, for the build machine's
# architecture (packaging/README.md), or with ARCH=arm64 for a Raspberry Pi, built in an
# emulated arm64 Debian (packaging/build-deb-emulated.sh; root, a few minutes the first
# time). DEB_DIR=... puts it elsewhere; DEB_COMPRESSION=gzip (default xz) builds faster
# and larger.
DEB_DIR ?= dist
HOST_ARCH := $(shell dpkg --print-architecture 2>/dev/null)
# Set on the command line only: an ARCH in the environment (some CI images have one) is not ours.
ARCH := $(HOST_ARCH)
.PHONY: deb
# The package's compiled kernels are kept between builds (a minute each), keyed by what they
# are made from besides their source (packaging/kernel-cache.sh; build-deb-emulated.sh keeps
# its own for other architectures).
KERNEL_CACHE_ROOT ?= $(HOME)/.cache/edge-agent
ifeq ($(ARCH),$(HOST_ARCH))
deb: venv
	cache=$$(KERNEL_CACHE_ROOT=$(KERNEL_CACHE_ROOT) packaging/kernel-cache.sh dir \
	    native-$(HOST_ARCH) /usr/bin/python3) && \
	packaging/build-deb.sh --out $(DEB_DIR) --kernel-cache "$$cache"
else
deb: container-tools qemu-user
	packaging/build-deb-emulated.sh --arch $(ARCH) --out $(DEB_DIR)
endif
