# Thin wrapper over CMake (the build itself is CMakeLists.txt).
#   make deps   install the Debian packages the build and tests need (only what is missing)
#   make        build (Release) into build/
#   make test   deps + build + every test through ctest
#   make demo   deps + build + the demo: a worker answering a digits classifier
#   make asan   build with address,undefined sanitizers into build-asan/ and run the tests
#   make install  build, then install quern-worker, quern and quern-broker into
#               $(PREFIX)/bin (default /usr/local; DESTDIR=... stages a package)
BUILD ?= build
CMAKE_FLAGS ?=
JOBS ?= $(shell nproc)
PY := /usr/bin/python3
PREFIX ?= /usr/local

PACKAGES := build-essential cmake pkg-config libzmq3-dev libmsgpack-dev liblmdb-dev lmdb-utils \
	libopenblas-dev libjansson-dev libxxhash-dev librdkafka-dev kcat \
	python3 python3-zmq python3-msgpack python3-numpy python3-sklearn python3-confluent-kafka python3-torch \
	libmicrohttpd-dev libyaml-dev yamllint prometheus curl

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build deps test demo asan bench clean install

all: build

deps:
	@missing=$$(for p in $(PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all packages present"; fi

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

test: deps build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

demo: deps build
	$(PY) demo/demo.py --build $(BUILD)

asan: deps
	$(MAKE) BUILD=build-asan CMAKE_FLAGS="-DQN_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)" build
	ctest --test-dir build-asan --output-on-failure -j $(JOBS)

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD) build-asan
