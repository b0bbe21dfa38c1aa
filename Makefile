# moe: top-level build.  `make` builds libmoe and the tools into $(BUILD)/,
# `make check` builds and runs every test, `make check SANITIZE=1` does the
# same under AddressSanitizer and UndefinedBehaviorSanitizer.
#
# Sources are found by naming convention so that adding a module never means
# editing this file:
#   libmoe/**/*.c            -> the library (static and shared)
#   libmoe/**/*_avx2.c       -> compiled with AVX2/FMA/F16C enabled
#   libmoe/**/*_avx512.c     -> compiled with AVX-512 enabled
#   tools/NAME.c             -> $(BUILD)/bin/NAME
#   tools/NAME/*.c           -> $(BUILD)/bin/NAME
#   tests/unit/test_NAME.c   -> one Check suite, suite_NAME(), in unit-tests

BUILD ?= build
SANITIZE ?= 0
ifeq ($(SANITIZE),1)
override BUILD := $(BUILD)-san
endif
SHARED ?= $(abspath ../shared)

CC ?= cc
ifeq ($(origin CC),default)
CC := gcc
endif
PKG_CONFIG ?= pkg-config
DEP_PKGS := liburing hwloc libdrm check

OPT ?= -O2
CFLAGS ?= $(OPT) -g
WARN := -Wall -Wextra -Wno-missing-field-initializers
BASE_CFLAGS := -std=gnu11 $(WARN) -pthread -fPIC -fvisibility=hidden \
	-D_GNU_SOURCE -Iinclude -Ilibmoe -MMD -MP
ifeq ($(SANITIZE),1)
BASE_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined
SAN_LDFLAGS := -fsanitize=address,undefined
endif
PKG_CFLAGS = $(shell $(PKG_CONFIG) --cflags liburing hwloc libdrm 2>/dev/null)
PKG_LIBS = $(shell $(PKG_CONFIG) --libs liburing hwloc libdrm 2>/dev/null)
CHECK_CFLAGS = $(shell $(PKG_CONFIG) --cflags check 2>/dev/null)
CHECK_LIBS = $(shell $(PKG_CONFIG) --libs check 2>/dev/null)
ALL_CFLAGS = $(BASE_CFLAGS) $(PKG_CFLAGS) $(CFLAGS)
LIBS = $(PKG_LIBS) -lm -ldl -pthread $(SAN_LDFLAGS)

AVX2_FLAGS := -mavx2 -mfma -mf16c
AVX512_FLAGS := $(AVX2_FLAGS) -mavx512f -mavx512bw -mavx512vl -mavx512dq

LIB_SRCS := $(sort $(shell find libmoe -name '*.c'))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)

TOOL_FILES := $(sort $(wildcard tools/*.c))
TOOL_DIRS := $(sort $(patsubst %/,%,$(dir $(wildcard tools/*/*.c))))
TOOLS := $(notdir $(TOOL_FILES:.c=) $(TOOL_DIRS))
TOOL_BINS := $(TOOLS:%=$(BUILD)/bin/%)

TEST_SRCS := $(sort $(wildcard tests/unit/test_*.c))
TEST_SUPPORT := $(filter-out $(TEST_SRCS),$(wildcard tests/unit/*.c)) $(wildcard tests/ref/*.c) \
	$(wildcard tests/fuzz/fuzz_*.c)
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/obj/%.o) $(TEST_SUPPORT:%.c=$(BUILD)/obj/%.o)
SUITES := $(patsubst tests/unit/test_%.c,%,$(TEST_SRCS))

STATIC_LIB := $(BUILD)/lib/libmoe.a
SHARED_LIB := $(BUILD)/lib/libmoe.so
SONAME := libmoe.so.0
DEPS_STAMP := $(BUILD)/.deps-ok

.PHONY: demo all lib tools check fuzz fuzz-build kmod kmod-build vm-check deps clean help
all: lib tools

# The README's first command: build, generate a model, run it on a budget.
demo: all
	@sh scripts/demo.sh $(BUILD)

help:
	@echo "targets: all (default), demo, check, check SANITIZE=1, fuzz FUZZ_TIME=s, kmod, vm-check, clean"

deps: $(DEPS_STAMP)
$(DEPS_STAMP): scripts/deps.sh
	@PKG_CONFIG=$(PKG_CONFIG) sh scripts/deps.sh $(DEP_PKGS)
	@mkdir -p $(@D) && touch $@

lib: $(STATIC_LIB) $(SHARED_LIB) $(BUILD)/lib/pkgconfig/libmoe.pc
tools: $(TOOL_BINS)

$(BUILD)/obj/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/obj/%_avx2.o: %_avx2.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(AVX2_FLAGS) -c $< -o $@

$(BUILD)/obj/%_avx512.o: %_avx512.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(AVX512_FLAGS) -c $< -o $@

$(STATIC_LIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@
	ar rcs $@ $^

$(SHARED_LIB): $(LIB_OBJS) libmoe/libmoe.map
	@mkdir -p $(@D)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=libmoe/libmoe.map \
		-Wl,--no-undefined -o $@.0 $(LIB_OBJS) $(LIBS)
	ln -sf libmoe.so.0 $@

$(BUILD)/lib/pkgconfig/libmoe.pc: libmoe/libmoe.pc.in
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(abspath $(BUILD))|' -e 's|@INCDIR@|$(CURDIR)/include|' $< > $@

# A tool is one file or one folder; both link the static library so the
# binaries run from the build tree without LD_LIBRARY_PATH.
define tool_rule
$(BUILD)/bin/$(1): $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tools/$(1).c tools/$(1)/*.c)) $(STATIC_LIB)
	@mkdir -p $$(@D)
	$$(CC) $$(ALL_CFLAGS) -o $$@ $$(filter %.o,$$^) $(STATIC_LIB) $$(LIBS)
endef
$(foreach t,$(TOOLS),$(eval $(call tool_rule,$(t))))

$(BUILD)/tests/suites.h: $(TEST_SRCS) Makefile
	@mkdir -p $(@D)
	@printf '%s\n' $(patsubst %,'SUITE(%)',$(SUITES)) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/tests/unit/main.o: $(BUILD)/tests/suites.h
$(BUILD)/obj/tests/%.o: ALL_CFLAGS += $(CHECK_CFLAGS) -I$(BUILD)/tests -Itests/unit -Itests/ref

$(BUILD)/tests/unit-tests: $(TEST_OBJS) $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -o $@ $(TEST_OBJS) $(STATIC_LIB) $(CHECK_LIBS) $(LIBS)

# The driver's VM tests run first (their own "N passed, N failed" line), the
# unit runner last; both always run and either failing fails the check.  Routing
# statistics the tools save go under the build tree, not the user's home.
check: all $(BUILD)/tests/unit-tests
	@vm=0; $(MAKE) --no-print-directory vm-check || vm=$$?; \
	MOE_BIN=$(abspath $(BUILD)/bin) MOE_SRC=$(CURDIR) MOE_SHARED=$(SHARED) \
		MOE_BUILD=$(abspath $(BUILD)) MOE_STATE_DIR=$(abspath $(BUILD))/tmp/state \
		$(BUILD)/tests/unit-tests || exit 1; \
	[ $$vm -eq 0 ] || { echo "make check: the driver's VM tests failed (see above)"; exit 1; }

# The kernel driver builds out of tree in $(BUILD)/kmod against Debian's
# generic 6.1 headers (tests/vm/headers.sh finds or installs them; KDIR
# overrides); vm-check boots it under QEMU (tests/vm/run.sh, root).
KMOD_OUT ?= $(BUILD)/kmod
kmod:
	@kdir=$$(sh tests/vm/headers.sh) && $(MAKE) --no-print-directory kmod-build KDIR=$$kdir
kmod-build:
	@mkdir -p $(KMOD_OUT)
	@cp -p kmod/*.c kmod/*.h kmod/Kbuild $(KMOD_OUT)/
	$(MAKE) -C $(KDIR) M=$(abspath $(KMOD_OUT)) MOE_UAPI_DIR=$(CURDIR)/include/uapi/drm W=1 modules
# run.sh builds the module with make: '+' hands it the jobserver under make -j, which
# would otherwise warn, and run.sh refuses a build log with warnings.
vm-check: tools
	+@MOE_BIN=$(abspath $(BUILD)/bin) MOE_VM_LDFLAGS="$(SAN_LDFLAGS)" sh tests/vm/run.sh $(BUILD)/vm

FUZZ_TIME ?= 60
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
# Fuzz targets link a clang build of the library instrumented for coverage
# (fuzzer-no-link) and ASan/UBSan, in its own build dir, so per-file SIMD
# flags apply as in every other build.
FUZZ_BUILD := $(BUILD)-fuzz
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_LIB := $(FUZZ_BUILD)/lib/libmoe.a
.PHONY: $(FUZZ_LIB)
$(FUZZ_LIB): | $(DEPS_STAMP)
	@$(MAKE) --no-print-directory $@ BUILD=$(FUZZ_BUILD) CC=clang SANITIZE=0 \
		CFLAGS="-O1 -g -fsanitize=fuzzer-no-link $(FUZZ_SAN)"
fuzz-build: $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)
$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB)
	@mkdir -p $(@D)
	clang -std=gnu11 -O1 -g -D_GNU_SOURCE -DMOE_FUZZ_MAIN -Iinclude -Ilibmoe \
		$(PKG_CFLAGS) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $< $(FUZZ_LIB) \
		$(PKG_LIBS) -lm -ldl -pthread
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(BUILD)/fuzz/corpus-$$t; \
		echo "fuzzing $$t for $(FUZZ_TIME)s (new inputs in $(BUILD)/fuzz/corpus-$$t)"; \
		$(BUILD)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_TIME) -max_len=65536 \
			$(BUILD)/fuzz/corpus-$$t tests/fuzz/corpus/$$t || exit 1; \
	done

clean:
	rm -rf build build-san

-include $(LIB_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(wildcard $(BUILD)/obj/tools/*.d $(BUILD)/obj/tools/*/*.d)
