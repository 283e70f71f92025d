# altgrad — two commands on a fresh Debian 12 machine (as root):
#   make run     install what is missing, build, start altgradd on 127.0.0.1:8080
#   make test    install what is missing, build, run every test
#
# Layout of the build (all under $(BUILD), ignored by git):
#   libagcore.a   core/    the mathematics (CBLAS)
#   libagproto.a  proto/   wire format (jansson)
#   libaltgrad.a  client/  client library (libcurl)
#   altgradd      server/  the service (libuv + libmicrohttpd)
#   altgrad       client/cli/  the command-line tool
#   tests/test_*  tests/unit/test_*.c, one Check program each

BUILD    ?= build
ARCH     ?= -march=native
SANITIZE ?=

# libclang-rt-14-dev: libFuzzer and the sanitizer runtimes for clang (`make fuzz`); clang only
# recommends it, and deps installs without recommends.
PKGS := gcc make pkg-config libc6-dev libopenblas-dev libjansson-dev libmicrohttpd-dev \
        libuv1-dev check libcurl4-openssl-dev curl openssl python3 python3-torch \
        python3-numpy gnuplot-nox haproxy wrk clang valgrind libclang-rt-14-dev

LIBS_PC := openblas jansson libmicrohttpd libuv libcurl
PC_CFLAGS = $(shell pkg-config --cflags $(LIBS_PC) check 2>/dev/null)
PC_LIBS   = $(shell pkg-config --libs $(LIBS_PC) 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

OPT := -O2
ifeq ($(SANITIZE),1)
  OPT := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
endif

CFLAGS  := -std=c11 $(OPT) -g -Wall -Wextra -Werror -D_GNU_SOURCE -pthread $(ARCH) $(PC_CFLAGS)
# The numeric kernels of core/ are loops over floats that GCC only vectorises fully at -O3.
CORE_CFLAGS := $(CFLAGS) $(if $(SANITIZE),,-O3) -fno-math-errno
comma := ,
LDFLAGS := -pthread $(if $(SANITIZE),-fsanitize=address$(comma)undefined)
LDLIBS  := $(PC_LIBS) -lm

CORE_SRC   := $(wildcard core/*.c)
PROTO_SRC  := $(wildcard proto/*.c)
SERVER_SRC := $(wildcard server/*.c)
CLIENT_SRC := $(wildcard client/*.c)
CLI_SRC    := $(wildcard client/cli/*.c)
TEST_SRC   := $(wildcard tests/unit/test_*.c)
TESTLIB_SRC:= $(wildcard tests/unit/lib/*.c)
BENCH_SRC  := $(wildcard tests/bench/*.c)
EXAMPLE_SRC:= $(wildcard client/examples/*.c)
FUZZ_SRC   := $(wildcard tests/fuzz/fuzz_*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

CORE_LIB   := $(BUILD)/libagcore.a
PROTO_LIB  := $(BUILD)/libagproto.a
CLIENT_LIB := $(BUILD)/libaltgrad.a
SERVER_BIN := $(BUILD)/altgradd
CLI_BIN    := $(BUILD)/altgrad
TEST_BINS  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRC))
BENCH_BINS := $(patsubst tests/bench/%.c,$(BUILD)/bench-bin/%,$(BENCH_SRC))
EXAMPLE_BINS := $(patsubst client/examples/%.c,$(BUILD)/examples/%,$(EXAMPLE_SRC))
# The fuzz targets built with $(CC) and a replay main(): `make test` reruns their seeds and
# past crashes (tests/fuzz/regress) without clang.
FUZZ_REPLAY_BINS := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz-replay/%,$(FUZZ_SRC))
SERVER_NOMAIN_OBJ = $(call obj,$(filter-out server/main.c,$(SERVER_SRC)))

ALL_LIBS := $(CLIENT_LIB) $(PROTO_LIB) $(CORE_LIB)
BINS := $(if $(SERVER_SRC),$(SERVER_BIN)) $(if $(CLI_SRC),$(CLI_BIN)) $(EXAMPLE_BINS)

.PHONY: all deps test test-run asan-test bench bench-paper run clean fixtures help
.PHONY: docker docker-test cluster-test
.PHONY: fuzz fuzz-build load valgrind-test
.DEFAULT_GOAL := all

all: $(CORE_LIB) $(PROTO_LIB) $(if $(CLIENT_SRC),$(CLIENT_LIB)) $(BINS) $(TEST_BINS) $(BENCH_BINS) \
     $(FUZZ_REPLAY_BINS)

help:
	@echo "make run | test | asan-test | bench | bench-paper | deps | clean | fixtures"
	@echo "make load | fuzz [FUZZ_SECONDS=60] | valgrind-test    (docs/hardening.md)"

# Installs every missing Debian package; does nothing when all are present.
deps:
	@missing=""; for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BUILD)/obj/core/%.o: core/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CORE_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(CORE_LIB): $(call obj,$(CORE_SRC))
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

$(PROTO_LIB): $(call obj,$(PROTO_SRC))
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

$(CLIENT_LIB): $(call obj,$(CLIENT_SRC))
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

$(SERVER_BIN): $(call obj,$(SERVER_SRC)) $(PROTO_LIB) $(CORE_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(CLI_BIN): $(call obj,$(CLI_SRC)) $(CLIENT_LIB) $(PROTO_LIB) $(CORE_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/examples/%: $(BUILD)/obj/client/examples/%.o $(CLIENT_LIB) $(PROTO_LIB) $(CORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(call obj,$(TESTLIB_SRC)) $(if $(CLIENT_SRC),$(CLIENT_LIB)) $(PROTO_LIB) $(CORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CHECK_LIBS)

$(BUILD)/bench-bin/%: $(BUILD)/obj/tests/bench/%.o $(if $(CLIENT_SRC),$(CLIENT_LIB)) $(PROTO_LIB) $(CORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/fuzz-replay/%: $(BUILD)/obj/tests/fuzz/%.o $(BUILD)/obj/tests/fuzz/replay_main.o \
                       $(SERVER_NOMAIN_OBJ) $(PROTO_LIB) $(CORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# One BLAS thread per caller: the core parallelises itself (see README, "Threads").
TEST_ENV := OPENBLAS_NUM_THREADS=1 CK_DEFAULT_TIMEOUT=600 ALTGRAD_BUILD=$(BUILD) \
            ALTGRAD_SERVER=$(abspath $(SERVER_BIN)) ALTGRAD_CLI=$(abspath $(CLI_BIN))

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory test-run

test-run:
	@fail=0; pass=0; for t in $(TEST_BINS); do \
	  echo "== $$t"; \
	  if env $(TEST_ENV) $$t; then pass=$$((pass+1)); else fail=$$((fail+1)); echo "FAILED: $$t"; fi; \
	done; \
	for s in tests/scripts/test_*.sh; do [ -e "$$s" ] || continue; \
	  echo "== $$s"; \
	  if env $(TEST_ENV) bash $$s; then pass=$$((pass+1)); else fail=$$((fail+1)); echo "FAILED: $$s"; fi; \
	done; \
	echo "test programs: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

asan-test: deps
	@$(MAKE) --no-print-directory BUILD=build/asan SANITIZE=1 all
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(MAKE) --no-print-directory BUILD=build/asan SANITIZE=1 test-run

bench: deps
	@$(MAKE) --no-print-directory all
	@mkdir -p $(BUILD)/bench
	@for s in tests/bench/bench_*.sh; do [ -e "$$s" ] || continue; \
	  echo "== $$s"; env $(TEST_ENV) BENCH_OUT=$(BUILD)/bench bash $$s || exit 1; done

# The co-author's published table (JamesSand/MultiLayer) rerun, then the gradient
# (docs/bench_paper.md); `make bench` runs it too (tests/bench/bench_paper.sh). A few minutes.
bench-paper: deps
	@$(MAKE) --no-print-directory all
	@mkdir -p $(BUILD)/bench
	@env $(TEST_ENV) BENCH_OUT=$(BUILD)/bench bash tests/bench/bench_paper.sh

run: deps
	@$(MAKE) --no-print-directory -j2 $(SERVER_BIN) $(CLI_BIN)
	@echo "altgradd on http://127.0.0.1:8080 — try, from another shell:"
	@echo "  curl -s -H 'Content-Type: application/json' --data @docs/example-request.json http://127.0.0.1:8080/v1/gradients"
	OPENBLAS_NUM_THREADS=1 exec $(SERVER_BIN)

# Deployment (deploy/, docs/deploy.md). `make docker` builds the image with the local Docker
# daemon. docker-test builds and runs it (starting a private daemon when it can, else it says
# SKIPPED) and validates compose, HAProxy and Kubernetes files. cluster-test runs 3 replicas
# behind haproxy on loopback under load, kills one, then runs docker-test.
IMAGE ?= altgrad:latest
docker:
	docker build -f deploy/Dockerfile -t $(IMAGE) .

docker-test:
	@$(MAKE) --no-print-directory $(SERVER_BIN)
	@env $(TEST_ENV) bash tests/scripts/docker_test.sh

cluster-test: deps
	@$(MAKE) --no-print-directory $(SERVER_BIN) $(BUILD)/bench-bin/cluster_load
	@env $(TEST_ENV) bash tests/scripts/cluster_test.sh
	@env $(TEST_ENV) bash tests/scripts/docker_test.sh

# Regenerates the PyTorch fixtures (Debian's python3-torch).
fixtures: deps
	/usr/bin/python3 tests/oracle/make_fixtures.py tests/oracle/fixtures

# ---- reliability (docs/hardening.md) ---------------------------------------------------
# `make fuzz`: every tests/fuzz/fuzz_*.c as a libFuzzer program (clang, ASan + UBSan), run
# FUZZ_SECONDS each from its seeds (tests/fuzz/seeds/<name>) plus the corpus grown by earlier
# runs ($(BUILD)/fuzz/corpus/<name>). A crash stops it; the input is saved as
# $(BUILD)/fuzz/crash-<name>-*: fix it and commit it under tests/fuzz/regress/<name>/.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := -std=c11 -O1 -g -fno-omit-frame-pointer -D_GNU_SOURCE -pthread -Wall -Wextra \
                $(PC_CFLAGS) $(FUZZ_SAN)
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRC))
FUZZ_BINS    := $(patsubst %,$(FUZZ_DIR)/fuzz_%,$(FUZZ_NAMES))
# Coverage feedback from the code under test; core/ is only sanitised (its numeric loops
# would drown the signal of the decoder and the server).
FUZZ_OBJ     := $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(PROTO_SRC) $(filter-out server/main.c,$(SERVER_SRC)) $(CORE_SRC))

# Kept: the fuzz programs are pattern targets, whose objects make would otherwise delete.
.PRECIOUS: $(FUZZ_DIR)/obj/%.o

$(FUZZ_DIR)/obj/core/%.o: core/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -O2 -MMD -MP -c $< -o $@

$(FUZZ_DIR)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/obj/tests/fuzz/fuzz_%.o $(FUZZ_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -pthread -o $@ $^ $(LDLIBS)

fuzz-build: deps
	@$(MAKE) --no-print-directory $(FUZZ_BINS)

fuzz: fuzz-build
	@for t in $(FUZZ_NAMES); do \
	  mkdir -p $(FUZZ_DIR)/corpus/$$t; \
	  dict=""; [ -f tests/fuzz/$$t.dict ] && dict="-dict=tests/fuzz/$$t.dict"; \
	  case $$t in b64) maxlen=4096;; *) maxlen=65536;; esac; \
	  regress=""; [ -d tests/fuzz/regress/$$t ] && regress=tests/fuzz/regress/$$t; \
	  echo "== fuzz_$$t: $(FUZZ_SECONDS) s"; \
	  env OPENBLAS_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    $(FUZZ_DIR)/fuzz_$$t $(FUZZ_DIR)/corpus/$$t tests/fuzz/seeds/$$t $$regress $$dict \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=3072 \
	    -max_len=$$maxlen -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_DIR)/crash-$$t- > $(FUZZ_DIR)/$$t.log 2>&1; rc=$$?; \
	  grep -aE '^#[0-9]+[[:space:]]+(INITED|DONE)' $(FUZZ_DIR)/$$t.log | sed 's/^/   /'; \
	  grep -aE '^stat::number_of_executed_units|^Done ' $(FUZZ_DIR)/$$t.log | sed 's/^/   /'; \
	  if [ $$rc -ne 0 ]; then echo "FAILED: fuzz_$$t (exit $$rc), see $(FUZZ_DIR)/$$t.log"; \
	    tail -40 $(FUZZ_DIR)/$$t.log; exit 1; fi; \
	done

# `make load`: 2 minutes of mixed traffic at 64 connections (tests/load/load.py); numbers in
# $(BUILD)/load/. LOAD_SECONDS and LOAD_CONNECTIONS override.
LOAD_SECONDS ?= 120
LOAD_CONNECTIONS ?= 64
load: deps
	@$(MAKE) --no-print-directory $(SERVER_BIN)
	@mkdir -p $(BUILD)/load
	env $(TEST_ENV) /usr/bin/python3 tests/load/load.py --server $(abspath $(SERVER_BIN)) \
	  --seconds $(LOAD_SECONDS) --connections $(LOAD_CONNECTIONS) --out $(BUILD)/load

# `make valgrind-test`: the server integration tests with altgradd under valgrind memcheck
# (an unsanitised build in build/valgrind): no byte definitely or indirectly lost.
valgrind-test: deps
	@$(MAKE) --no-print-directory BUILD=build/valgrind ARCH= all
	@env $(TEST_ENV) ALTGRAD_BUILD=build/valgrind ALTGRAD_SERVER=$(abspath build/valgrind/altgradd) \
	  ALTGRAD_CLI=$(abspath build/valgrind/altgrad) bash tests/load/valgrind_test.sh

clean:
	rm -rf $(BUILD) build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
-include $(shell find $(FUZZ_DIR)/obj -name '*.d' 2>/dev/null)
