# moe: top-level build.  `make` builds libmoe and the tools into $(BUILD)/,
# `make check` builds and runs every test, `make check SANITIZE=1` does the
# same under AddressSanitizer and UndefinedBehaviorSanitizer.
#
# Sources are found by naming convention so that adding a module never means
# editing this file:
#   libmoe/**/*.c            -> the library (static and shared)
#   libmoe/**/*_avx2.c       -> compiled with AVX2/FMA/F16C enabled
#   libmoe/**/*_avx512.c     -> compiled with AVX-512 F/BW/VL/DQ enabled
#   libmoe/**/*_avx512vnni.c -> the same plus AVX-512 VNNI
#   tools/NAME.c             -> $(BUILD)/bin/NAME
#   tools/NAME/*.c           -> $(BUILD)/bin/NAME
#   tools/common/*.c         -> linked into every tool (not a tool itself)
#   tools/bench/*.c          -> the benchmarks, linked into moe-bench and moectl
#   tests/unit/test_NAME.c   -> one Check suite, suite_NAME(), in unit-tests
#   tests/simt/*.cc          -> the CUDA emulation runtime (C++), in unit-tests
#   cuda/*.cu tests/simt/*.cu -> kernels compiled as C++ on the emulation, in unit-tests;
#                               cuda/*.cu also by nvcc into the fatbin embedded in libmoe
#   tests/simt/lib*.c        -> $(BUILD)/tests/lib*.so, fake driver libraries for dlopen

BUILD ?= build
SANITIZE ?= 0
ifeq ($(SANITIZE),1)
override BUILD := $(BUILD)-san
endif
SHARED ?= $(abspath ../shared)
comma := ,

CC ?= cc
ifeq ($(origin CC),default)
CC := gcc
endif
# C++ only for the CUDA emulation in the unit tests: the compiler that matches CC.
ifeq ($(origin CXX),default)
CXX := $(if $(findstring clang,$(CC)),$(subst clang,clang++,$(CC)),g++)
endif
CXX_IS_CLANG := $(shell $(CXX) --version 2>/dev/null | grep -q clang && echo 1)
# nvcc builds the fatbin when it is there; NVCC= builds without CUDA kernels.
ifeq ($(origin NVCC),undefined)
NVCC := $(or $(wildcard /usr/local/cuda/bin/nvcc),$(shell command -v nvcc 2>/dev/null))
endif
PKG_CONFIG ?= pkg-config
DEP_PKGS := liburing hwloc libdrm check libmicrohttpd jansson
# moe-server's HTTP and JSON libraries; the request parser (api.c) and the
# JSON Schema converter it uses are also in the unit tests and fuzz targets.
SERVER_PKGS := libmicrohttpd jansson
SERVER_API_SRCS := tools/moe-server/api.c tools/moe-server/chatfmt.c tools/common/schema.c \
	tools/common/strbuf.c

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
CXXFLAGS ?= $(OPT) -g
BASE_CXXFLAGS := -std=c++17 $(WARN) -pthread -fPIC -D_GNU_SOURCE -Iinclude -Ilibmoe \
	-Itests/simt -Icuda -MMD -MP
# The .cu objects get the compiler's ThreadSanitizer instrumentation, which
# calls out for every load and store (reads and writes apart); the calls are
# renamed by tests/simt/hooks.syms to the emulation's hooks, which check shared
# and device memory (no TSan runtime is linked).  Under SANITIZE=1 the hooks
# also ask AddressSanitizer about every other access: the two instrumentations
# do not mix in one object.
ifeq ($(CXX_IS_CLANG),1)
CU_INSTR := -fsanitize=thread -mllvm -tsan-instrument-func-entry-exit=0 \
	-mllvm -tsan-instrument-atomics=0 -mllvm -tsan-instrument-read-before-write=1 \
	-mllvm -tsan-distinguish-volatile=0
else
CU_INSTR := -fsanitize=thread --param tsan-instrument-func-entry-exit=0 \
	--param tsan-distinguish-volatile=0
endif
CU_CXXFLAGS = $(BASE_CXXFLAGS) $(CXXFLAGS) -x c++ -include tests/simt/simt.h $(CU_INSTR) \
	-fstack-clash-protection
ifeq ($(SANITIZE),1)
SAN_CXXFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined
# out-of-bounds shared arrays and null pointers are the emulation's to report, as launch errors
CU_CXXFLAGS += -fsanitize=undefined -fno-sanitize=bounds,null -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined
endif
ALL_CXXFLAGS = $(BASE_CXXFLAGS) $(SAN_CXXFLAGS) $(CXXFLAGS)
PKG_CFLAGS = $(shell $(PKG_CONFIG) --cflags liburing hwloc libdrm 2>/dev/null)
PKG_LIBS = $(shell $(PKG_CONFIG) --libs liburing hwloc libdrm 2>/dev/null)
CHECK_CFLAGS = $(shell $(PKG_CONFIG) --cflags check 2>/dev/null)
CHECK_LIBS = $(shell $(PKG_CONFIG) --libs check 2>/dev/null)
# The tools' JSON writer (tools/common/json.c); the library does not use it.
JSON_CFLAGS = $(shell $(PKG_CONFIG) --cflags jansson 2>/dev/null)
JSON_LIBS = $(shell $(PKG_CONFIG) --libs jansson 2>/dev/null)
SERVER_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(SERVER_PKGS) 2>/dev/null)
SERVER_LIBS = $(shell $(PKG_CONFIG) --libs $(SERVER_PKGS) 2>/dev/null)
ALL_CFLAGS = $(BASE_CFLAGS) $(PKG_CFLAGS) $(CFLAGS)
LIBS = $(PKG_LIBS) -lm -ldl -pthread $(SAN_LDFLAGS)

AVX2_FLAGS := -mavx2 -mfma -mf16c
AVX512_FLAGS := $(AVX2_FLAGS) -mavx512f -mavx512bw -mavx512vl -mavx512dq

LIB_SRCS := $(sort $(shell find libmoe -name '*.c'))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)

TOOL_FILES := $(sort $(wildcard tools/*.c))
TOOL_DIRS := $(filter-out tools/common tools/bench,$(sort $(patsubst %/,%,$(dir $(wildcard tools/*/*.c)))))
TOOL_COMMON_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(sort $(wildcard tools/common/*.c)))
# The benchmarks, linked by the two tools that run them (moe-bench, moectl bench).
BENCH_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(sort $(wildcard tools/bench/*.c)))
TOOLS := $(notdir $(TOOL_FILES:.c=) $(TOOL_DIRS))
TOOL_BINS := $(TOOLS:%=$(BUILD)/bin/%)

TEST_SRCS := $(sort $(wildcard tests/unit/test_*.c))
TEST_SUPPORT := $(filter-out $(TEST_SRCS),$(wildcard tests/unit/*.c)) $(wildcard tests/ref/*.c) \
	$(wildcard tests/fuzz/fuzz_*.c) $(SERVER_API_SRCS)
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/obj/%.o) $(TEST_SUPPORT:%.c=$(BUILD)/obj/%.o)
SUITES := $(patsubst tests/unit/test_%.c,%,$(TEST_SRCS))
SIMT_SRCS := $(sort $(wildcard tests/simt/*.cc))
CU_SRCS := $(sort $(wildcard cuda/*.cu tests/simt/*.cu))
SIMT_OBJS := $(SIMT_SRCS:%.cc=$(BUILD)/obj/%.o) $(CU_SRCS:%=$(BUILD)/obj/%.o)
SIMT_SOS := $(patsubst tests/simt/%.c,$(BUILD)/tests/%.so,$(wildcard tests/simt/lib*.c))

# The fatbin: every cuda/*.cu in one translation unit (nvcc cannot link PTX
# across files), SASS for sm_80 and sm_90 and PTX for newer GPUs.
KERNEL_SRCS := $(sort $(wildcard cuda/*.cu))
NVCC_FLAGS := -std=c++17 -O3 -Icuda --Werror all-warnings \
	-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
	-gencode arch=compute_90,code=compute_90
FATBIN := $(if $(NVCC),$(if $(KERNEL_SRCS),$(BUILD)/cuda/kernels.fatbin))
SELFTEST_FATBIN := $(if $(NVCC),$(BUILD)/cuda/selftest.fatbin)

STATIC_LIB := $(BUILD)/lib/libmoe.a
SHARED_LIB := $(BUILD)/lib/libmoe.so
# The release: libmoe.pc's Version and the installed library's file name; the
# soname follows the major version, which moves only on an ABI break.
MOE_MAJOR := $(shell sed -n 's/^\#define MOE_VERSION_MAJOR //p' include/moe/moe.h)
MOE_MINOR := $(shell sed -n 's/^\#define MOE_VERSION_MINOR //p' include/moe/moe.h)
LIB_VERSION := $(MOE_MAJOR).$(MOE_MINOR).0
SONAME := libmoe.so.$(MOE_MAJOR)
DEPS_STAMP := $(BUILD)/.deps-ok

.PHONY: demo all lib tools man check fuzz fuzz-build kmod kmod-build vm-check deps clean help \
	install uninstall examples man3
all: lib tools examples man3

# The README's first command: build, generate a model, run it on a budget.
demo: all
	@sh scripts/demo.sh $(BUILD)

help:
	@echo "targets: all (default), demo, man, check, check SANITIZE=1, fuzz FUZZ_TIME=s, kmod,"
	@echo "         vm-check, install PREFIX=... DESTDIR=..., uninstall (same variables), clean"

# Man pages from the tools' pages in Documentation/tools (rst2man, Debian's
# python3-docutils, which scripts/deps.sh installs for this target), by
# scripts/man.sh.
# Besides a page per tool, a page per moectl command (moectl-status.1, as
# bpftool-prog.8), cut from moectl.rst by the same script.
MAN1_PAGES := $(patsubst Documentation/tools/%.rst,$(BUILD)/man/man1/%.1,\
	$(filter-out Documentation/tools/files.rst,$(wildcard Documentation/tools/*.rst)))
MOECTL_CMDS := $(shell sh scripts/man.sh --commands Documentation/tools/moectl.rst)
MAN1_PAGES += $(MOECTL_CMDS:%=$(BUILD)/man/man1/moectl-%.1)
man: $(MAN1_PAGES)
$(BUILD)/man/man1/%.1: Documentation/tools/%.rst scripts/man.sh scripts/deps.sh
	@DEPS_MAN=1 PKG_CONFIG=$(PKG_CONFIG) sh scripts/deps.sh
	@mkdir -p $(@D)
	sh scripts/man.sh $< $@
$(BUILD)/man/man1/moectl-%.1: Documentation/tools/moectl.rst tools/moectl/main.c scripts/man.sh \
		scripts/deps.sh
	@DEPS_MAN=1 PKG_CONFIG=$(PKG_CONFIG) sh scripts/deps.sh
	@mkdir -p $(@D)
	sh scripts/man.sh $< $@ $*

deps: $(DEPS_STAMP)
$(DEPS_STAMP): scripts/deps.sh
	@PKG_CONFIG=$(PKG_CONFIG) sh scripts/deps.sh $(DEP_PKGS)
	@mkdir -p $(@D) && touch $@

lib: $(STATIC_LIB) $(SHARED_LIB) $(BUILD)/lib/pkgconfig/libmoe.pc
tools: $(TOOL_BINS)

$(BUILD)/obj/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.cc | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) -c $< -o $@

# An instrumentation call left without a hook would find no definition (or
# a sanitizer runtime's): refuse the object.
$(BUILD)/obj/%.cu.o: %.cu tests/simt/hooks.syms | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CXX) $(CU_CXXFLAGS) -MT $@ -MF $(@:.o=.d) -c $< -o $@.tmp
	objcopy --redefine-syms=tests/simt/hooks.syms $@.tmp
	@left=$$(nm -u $@.tmp | grep -o '__tsan_[A-Za-z0-9_]*' | sort -u | tr '\n' ' '); \
	if [ -n "$$left" ]; then \
		echo "$<: instrumentation calls with no hook in tests/simt/hooks.syms: $$left" >&2; \
		rm -f $@.tmp; exit 1; fi
	@mv $@.tmp $@

$(BUILD)/tests/lib%.so: tests/simt/lib%.c tests/simt/libcuda_fake.c libmoe/backend/cuda_api.h \
		| $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MT $@ -MF $(@:.so=.d) -shared -o $@ $< \
		$(if $(wildcard tests/simt/lib$*.map),-Wl$(comma)--version-script=tests/simt/lib$*.map) \
		$(SAN_LDFLAGS)

# The fake driver with the emulation and every kernel: a driver for other processes.
SIM_DRIVER := $(BUILD)/tests/libcuda_sim.so
$(SIM_DRIVER): tests/simt/sim_driver.c tests/simt/libcuda_fake.c $(SIMT_OBJS) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MT $@ -MF $(@:.so=.d) -c -o $(@:.so=.o) $<
	@# last: its constructor binds the fake once the fake's own statics are built
	$(CXX) $(ALL_CXXFLAGS) -shared -o $@ $(SIMT_OBJS) $(@:.so=.o) $(SAN_LDFLAGS)

$(BUILD)/cuda/kernels.cu: $(KERNEL_SRCS) Makefile
	@mkdir -p $(@D)
	@printf '#include "%s"\n' $(abspath $(KERNEL_SRCS)) > $@.tmp && \
		{ cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@; }

# kernels.cu keeps its date while its list is unchanged, so editing the Makefile
# does not rerun nvcc (30 s); the kernels' own headers do.
$(BUILD)/cuda/kernels.fatbin: $(BUILD)/cuda/kernels.cu $(KERNEL_SRCS) $(wildcard cuda/*.cuh cuda/*.h)
	$(NVCC) -fatbin $(NVCC_FLAGS) -o $@ $<

# The emulation's self-test is valid CUDA: checked here, never embedded.
$(BUILD)/cuda/selftest.fatbin: tests/simt/selftest.cu $(wildcard cuda/*.cuh)
	@mkdir -p $(@D)
	$(NVCC) -fatbin $(NVCC_FLAGS) -o $@ $<

$(BUILD)/obj/libmoe/version.o: ALL_CFLAGS += -DMOE_SONAME='"$(SONAME)"'
$(BUILD)/obj/libmoe/backend/cuda_fatbin.o: $(FATBIN)
$(BUILD)/obj/libmoe/backend/cuda_fatbin.o: ALL_CFLAGS += \
	$(if $(FATBIN),-DMOE_CUDA_FATBIN='"$(abspath $(FATBIN))"')

# The K-quant fit's vector lanes must round as its scalar reference does: no fused multiply-add.
$(BUILD)/obj/libmoe/quant/quantize.o: ALL_CFLAGS += -ffp-contract=off

$(BUILD)/obj/%_avx2.o: %_avx2.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(AVX2_FLAGS) -c $< -o $@

$(BUILD)/obj/%_avx512.o: %_avx512.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(AVX512_FLAGS) -c $< -o $@

$(BUILD)/obj/%_avx512vnni.o: %_avx512vnni.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(AVX512_FLAGS) -mavx512vnni -c $< -o $@

$(STATIC_LIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@
	ar rcs $@ $^

$(SHARED_LIB): $(LIB_OBJS) libmoe/libmoe.map
	@mkdir -p $(@D)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=libmoe/libmoe.map \
		-Wl,--no-undefined -o $(@D)/$(SONAME) $(LIB_OBJS) $(LIBS)
	ln -sf $(SONAME) $@

# The build tree's libmoe.pc points at the build tree, the installed one at PREFIX.
$(BUILD)/lib/pkgconfig/libmoe.pc: libmoe/libmoe.pc.in
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(abspath $(BUILD))|' -e 's|@LIBDIR@|$${prefix}/lib|' \
		-e 's|@INCDIR@|$(CURDIR)/include|' -e 's|@VERSION@|$(LIB_VERSION)|' $< > $@

# A tool is one file or one folder, plus the code every tool shares in
# tools/common.  The tools are built as programs outside this tree are: with
# include/ only (not libmoe/) and linked to the shared library, found through
# the run path $ORIGIN/../lib (build/bin -> build/lib, $PREFIX/bin ->
# $PREFIX/lib), so they can use nothing the API does not export.  The two in
# STATIC_TOOLS need internals and link the static library instead
# (Documentation/api.rst, "How the tools link").
STATIC_TOOLS := moe-mkmodel moe-bench moectl
$(BUILD)/obj/tools/%.o: ALL_CFLAGS = $(filter-out -Ilibmoe,$(BASE_CFLAGS)) $(PKG_CFLAGS) \
	$(CFLAGS) -Itools/common -Itools/bench $(JSON_CFLAGS)
$(foreach t,$(STATIC_TOOLS),$(eval $(BUILD)/obj/tools/$(t)/%.o: ALL_CFLAGS += -Ilibmoe))
$(BUILD)/obj/tools/moe-server/%.o: ALL_CFLAGS += $(SERVER_CFLAGS)
$(BUILD)/bin/moe-server: TOOL_LIBS = $(SERVER_LIBS)
define tool_rule
$(BUILD)/bin/$(1): $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tools/$(1).c tools/$(1)/*.c)) \
		$(TOOL_COMMON_OBJS) $(if $(filter moe-bench moectl,$(1)),$(BENCH_OBJS)) \
		$(if $(filter $(1),$(STATIC_TOOLS)),$(STATIC_LIB),$(SHARED_LIB))
	@mkdir -p $$(@D)
	$$(CC) $$(ALL_CFLAGS) -o $$@ $$(filter %.o,$$^) $(if $(filter $(1),$(STATIC_TOOLS)),\
		$(STATIC_LIB) $$(TOOL_LIBS) $$(JSON_LIBS) $$(LIBS),\
		$(SHARED_LIB) -Wl$$(comma)-rpath$$(comma)'$$$$ORIGIN/../lib' $$(TOOL_LIBS) \
		$$(JSON_LIBS) -lm -pthread $$(SAN_LDFLAGS))
endef
$(foreach t,$(TOOLS),$(eval $(call tool_rule,$(t))))
# moectl plan --preset writes its model with moe-mkmodel's code (all but its main.c)
MKMODEL_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out tools/moe-mkmodel/main.c,\
	$(wildcard tools/moe-mkmodel/*.c)))
$(BUILD)/bin/moectl: $(MKMODEL_OBJS)
$(BUILD)/obj/tools/moectl/%.o: ALL_CFLAGS += -Itools/moe-mkmodel

$(BUILD)/tests/suites.h: $(TEST_SRCS) Makefile
	@mkdir -p $(@D)
	@printf '%s\n' $(patsubst %,'SUITE(%)',$(SUITES)) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/tests/unit/main.o: $(BUILD)/tests/suites.h
$(BUILD)/obj/tests/%.o: ALL_CFLAGS += $(CHECK_CFLAGS) $(JSON_CFLAGS) -I$(BUILD)/tests -Itests/unit \
	-Itests/ref -Itests/simt -Itools/moe-server -Itools/common $(SERVER_CFLAGS)
$(BUILD)/obj/tests/unit/test_simt.o: ALL_CFLAGS += -DMOE_TEST_FATBIN=$(if $(FATBIN),1,0)
$(BUILD)/obj/tests/unit/cuda_abi.o: ALL_CFLAGS += $(CUDA_H_CFLAGS)
CUDA_H_CFLAGS = $(if $(wildcard $(CUDA_INC)/cuda.h),-I$(CUDA_INC) -DMOE_HAVE_CUDA_H=1)
CUDA_INC ?= $(if $(NVCC),$(abspath $(dir $(NVCC))/../include),/usr/local/cuda/include)

# Linked by the C++ compiler: the emulation needs libstdc++, libmoe does not.
$(BUILD)/tests/unit-tests: $(TEST_OBJS) $(SIMT_OBJS) $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) -o $@ $(TEST_OBJS) $(SIMT_OBJS) $(STATIC_LIB) $(CHECK_LIBS) \
		$(SERVER_LIBS) $(JSON_LIBS) $(LIBS)

# examples/NAME.c -> $(BUILD)/examples/NAME: built as a program outside this
# tree would be, with the public headers only, linked to the shared library
# (found beside the build's bin/ through the run path).
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(sort $(wildcard examples/*.c)))
examples: $(EXAMPLES)
$(BUILD)/examples/%: examples/%.c include/moe/moe.h $(SHARED_LIB)
	@mkdir -p $(@D)
	$(CC) -std=gnu11 $(WARN) -Iinclude $(CFLAGS) $(filter -fsanitize% -fno-%,$(BASE_CFLAGS)) \
		-o $@ $< -L$(BUILD)/lib -lmoe -Wl,-rpath,'$$ORIGIN/../lib' $(SAN_LDFLAGS)

# Section-3 man pages, one per MOE_API function, made from the comments of
# moe.h by scripts/man3.awk (which fails for a function with no comment).
lparen := (
API_FUNCS := $(shell sed -n -E \
	's/^MOE_API[[:space:]][^$(lparen)]*[^A-Za-z0-9_]([A-Za-z_][A-Za-z0-9_]*)[$(lparen)].*/\1/p' \
	include/moe/moe.h)
MAN3_PAGES := $(API_FUNCS:%=$(BUILD)/man3/%.3)
man3: $(BUILD)/man3/.stamp
$(BUILD)/man3/.stamp: include/moe/moe.h scripts/man3.awk
	@rm -rf $(@D) && mkdir -p $(@D)
	awk -v outdir=$(@D) -v version=$(LIB_VERSION) -f scripts/man3.awk include/moe/moe.h
	@touch $@

# Several contexts on one model, on threads of their own, under ThreadSanitizer:
# the library built again with -fsanitize=thread in its own build dir (as the
# fuzz build is), and tests/platform/threads.c linked to it; the platform
# suite runs it.  TSAN=0 leaves it out (the suite then says it did not run).
TSAN ?= 1
TSAN_BUILD := $(BUILD)-tsan
TSAN_LIB := $(TSAN_BUILD)/lib/libmoe.a
TSAN_TEST := $(if $(filter 1,$(TSAN)),$(BUILD)/tests/threads-tsan)
.PHONY: $(TSAN_LIB)
$(TSAN_LIB): | $(DEPS_STAMP)
	@$(MAKE) --no-print-directory $@ BUILD=$(TSAN_BUILD) SANITIZE=0 \
		CFLAGS="-O1 -g -fsanitize=thread"
$(BUILD)/tests/threads-tsan: tests/platform/threads.c include/moe/moe.h $(TSAN_LIB)
	@mkdir -p $(@D)
	$(CC) -std=gnu11 $(WARN) -Iinclude -O1 -g -fsanitize=thread -o $@ $< $(TSAN_LIB) \
		$(PKG_LIBS) -lm -ldl -pthread

# moe.h compiled as C++ (tests/platform/cxx_header.cc): pedantic, warnings are errors.
CXX_HEADER_TEST := $(BUILD)/tests/cxx-header
$(CXX_HEADER_TEST): tests/platform/cxx_header.cc include/moe/moe.h $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CXX) -std=c++11 -Wall -Wextra -pedantic -Werror -Iinclude $(CXXFLAGS) $(SAN_CXXFLAGS) \
		-o $@ $< $(STATIC_LIB) $(LIBS)

# The driver's VM tests run first (their own "N passed, N failed, N did not run" line), the
# unit runner last; both always run and either failing fails the check.  Routing
# statistics the tools save go under the build tree, not the user's home.
check: all $(BUILD)/tests/unit-tests $(SIMT_SOS) $(SIM_DRIVER) $(SELFTEST_FATBIN) $(CXX_HEADER_TEST) \
		$(TSAN_TEST)
	@vm=0; $(MAKE) --no-print-directory vm-check || vm=$$?; \
	MOE_BIN=$(abspath $(BUILD)/bin) MOE_SRC=$(CURDIR) MOE_SHARED=$(SHARED) \
		MOE_CC="$(CC)" MOE_MAKE="$(MAKE)" MOE_SAN_LDFLAGS="$(SAN_LDFLAGS)" \
		MOE_BUILD=$(abspath $(BUILD)) MOE_STATE_DIR=$(abspath $(BUILD))/tmp/state \
		$(BUILD)/tests/unit-tests || exit 1; \
	[ $$vm -eq 0 ] || { echo "make check: the driver's VM tests failed (see above)"; exit 1; }

# The kernel driver builds out of tree in $(BUILD)/kmod against Debian's
# generic 6.1 headers (tests/vm/headers.sh finds or installs them; KDIR
# overrides); vm-check boots it under QEMU (tests/vm/run.sh, root).  run.sh
# runs $(MAKE) itself: the "+" hands it the jobserver under make -j.
KMOD_OUT ?= $(BUILD)/kmod
kmod:
	@kdir=$$(sh tests/vm/headers.sh) && $(MAKE) --no-print-directory kmod-build KDIR=$$kdir
kmod-build:
	@mkdir -p $(KMOD_OUT)
	@cp -p kmod/*.c kmod/*.h kmod/Kbuild $(KMOD_OUT)/
	$(MAKE) -C $(KDIR) M=$(abspath $(KMOD_OUT)) MOE_UAPI_DIR=$(CURDIR)/include/uapi/drm W=1 modules
# '+': run.sh's make of moe.ko joins the jobserver; without it, under -j, that
# make warns "jobserver unavailable", which run.sh counts as a build warning.
# Both kernels: Debian 12's 6.1 (render node) and bookworm-backports' 6.12
# (DRM_ACCEL: the accel node); each run says its own verdict.
vm-check: tools
	+@rc=0; for k in 6.1 6.12; do \
		dir=$(BUILD)/vm; [ $$k = 6.1 ] || dir=$(BUILD)/vm-$$k; \
		MAKE="$(MAKE)" MOE_BIN=$(abspath $(BUILD)/bin) MOE_VM_LDFLAGS="$(SAN_LDFLAGS)" \
		MOE_VM_KERNEL=$$k sh tests/vm/run.sh $$dir || rc=1; \
	done; exit $$rc

# make install: the library (static, shared with its soname links), the public
# headers, libmoe.pc, the tools, the man pages, the udev rule and
# the DKMS source tree of the driver.  make uninstall removes exactly the
# files of that list, then the directories install made if they are empty.
# Every directory is a variable, for distributions that place them elsewhere
# (UDEVRULESDIR=/usr/lib/udev/rules.d, DKMSDIR=/usr/src/moe-1.0).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
UDEVRULESDIR ?= $(PREFIX)/lib/udev/rules.d
DKMS_VERSION := $(shell sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' kmod/dkms.conf)
DKMSDIR ?= $(PREFIX)/src/moe-$(DKMS_VERSION)
INSTALL ?= install

# Man pages: the section-3 pages of the API (man3 below), and any NAME.N under
# Documentation/ or made into $(BUILD)/man.
MAN_PAGES = $(sort $(wildcard Documentation/*.[1-8] Documentation/man/*.[1-8] \
	$(BUILD)/man/*.[1-8]))
DKMS_SRCS := $(sort $(wildcard kmod/*.c kmod/*.h)) kmod/Kbuild kmod/Makefile kmod/dkms.conf
INSTALL_FILES = $(TOOLS:%=$(BINDIR)/%) \
	$(LIBDIR)/libmoe.a $(LIBDIR)/libmoe.so.$(LIB_VERSION) $(LIBDIR)/$(SONAME) \
	$(LIBDIR)/libmoe.so $(INCLUDEDIR)/moe/moe.h $(INCLUDEDIR)/moe/uapi/moe_drm.h \
	$(PKGCONFIGDIR)/libmoe.pc $(UDEVRULESDIR)/60-moe.rules \
	$(DKMS_SRCS:kmod/%=$(DKMSDIR)/%) $(DKMSDIR)/uapi/moe_drm.h \
	$(foreach m,$(MAN_PAGES),$(MANDIR)/man$(subst .,,$(suffix $(m)))/$(notdir $(m))) \
	$(API_FUNCS:%=$(MANDIR)/man3/%.3) $(addprefix $(MANDIR)/man1/,$(notdir $(MAN1_PAGES))) \
	$(addprefix $(BASHCOMPDIR)/,$(TOOLS))
INSTALL_DIRS = $(DKMSDIR)/uapi $(DKMSDIR) $(INCLUDEDIR)/moe/uapi $(INCLUDEDIR)/moe \
	$(sort $(MANDIR)/man1 $(MANDIR)/man3 \
		$(foreach m,$(MAN_PAGES),$(MANDIR)/man$(subst .,,$(suffix $(m))))) \
	$(MANDIR) $(BASHCOMPDIR) $(dir $(BASHCOMPDIR)) \
	$(UDEVRULESDIR) $(dir $(UDEVRULESDIR)) $(dir $(DKMSDIR)) $(PKGCONFIGDIR) $(BINDIR) \
	$(LIBDIR) $(INCLUDEDIR) $(PREFIX)/share
D := $(DESTDIR)
# libmoe.pc names directories under PREFIX through ${prefix}, so that
# pkg-config --define-variable=prefix=... relocates them.
pc_rel = $(patsubst $(PREFIX)/%,$${prefix}/%,$(1))

install: all
	$(INSTALL) -d $(D)$(BINDIR) $(D)$(LIBDIR) $(D)$(PKGCONFIGDIR) $(D)$(INCLUDEDIR)/moe/uapi \
		$(D)$(UDEVRULESDIR) $(D)$(DKMSDIR)/uapi
	$(INSTALL) -m 755 $(TOOL_BINS) $(D)$(BINDIR)/
	$(INSTALL) -m 644 $(STATIC_LIB) $(D)$(LIBDIR)/libmoe.a
	$(INSTALL) -m 755 $(BUILD)/lib/$(SONAME) $(D)$(LIBDIR)/libmoe.so.$(LIB_VERSION)
	ln -sf libmoe.so.$(LIB_VERSION) $(D)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(D)$(LIBDIR)/libmoe.so
	$(INSTALL) -m 644 include/moe/moe.h $(D)$(INCLUDEDIR)/moe/moe.h
	$(INSTALL) -m 644 include/uapi/drm/moe_drm.h $(D)$(INCLUDEDIR)/moe/uapi/moe_drm.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(call pc_rel,$(LIBDIR))|' \
		-e 's|@INCDIR@|$(call pc_rel,$(INCLUDEDIR))|' \
		-e 's|@VERSION@|$(LIB_VERSION)|' libmoe/libmoe.pc.in > $(D)$(PKGCONFIGDIR)/libmoe.pc
	chmod 644 $(D)$(PKGCONFIGDIR)/libmoe.pc
	$(INSTALL) -m 644 kmod/60-moe.rules $(D)$(UDEVRULESDIR)/60-moe.rules
	$(INSTALL) -m 644 $(DKMS_SRCS) $(D)$(DKMSDIR)/
	$(INSTALL) -m 644 include/uapi/drm/moe_drm.h $(D)$(DKMSDIR)/uapi/moe_drm.h
	$(INSTALL) -d $(D)$(MANDIR)/man3
	$(INSTALL) -m 644 $(MAN3_PAGES) $(D)$(MANDIR)/man3/
	@set -e; for m in $(MAN_PAGES); do s=$${m##*.}; \
		echo "$(INSTALL) -D -m 644 $$m $(D)$(MANDIR)/man$$s/$${m##*/}"; \
		$(INSTALL) -D -m 644 $$m $(D)$(MANDIR)/man$$s/$${m##*/}; done
	@# The tools' pages need rst2man (python3-docutils); without it the rest installs.
	@if command -v rst2man >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory man && \
		echo "$(INSTALL) -m 644 $(MAN1_PAGES) $(D)$(MANDIR)/man1/" && \
		$(INSTALL) -d $(D)$(MANDIR)/man1 && \
		$(INSTALL) -m 644 $(MAN1_PAGES) $(D)$(MANDIR)/man1/; \
	else \
		echo "make install: rst2man not found: the tools' man pages (man1) are not" \
			"installed; install python3-docutils (\`make man\` does, as root) and" \
			"run make install again"; \
	fi
	$(INSTALL) -d $(D)$(BASHCOMPDIR)
	$(INSTALL) -m 644 completion/moectl $(D)$(BASHCOMPDIR)/moectl
	@# bash-completion loads a completion by the command's name: one file, a link per tool
	for t in $(filter-out moectl,$(TOOLS)); do ln -sf moectl $(D)$(BASHCOMPDIR)/$$t; done

uninstall:
	rm -f $(addprefix $(D),$(INSTALL_FILES))
	-@for d in $(addprefix $(D),$(INSTALL_DIRS)); do \
		[ ! -d "$$d" ] || rmdir "$$d" 2>/dev/null || :; done

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
# fuzz_request and fuzz_toolcall take the server's request parser and chat formats
$(BUILD)/fuzz/fuzz_request $(BUILD)/fuzz/fuzz_toolcall: $(SERVER_API_SRCS)
$(BUILD)/fuzz/fuzz_schema: tools/common/schema.c tools/common/strbuf.c
$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB)
	@mkdir -p $(@D)
	clang -std=gnu11 -O1 -g -D_GNU_SOURCE -DMOE_FUZZ_MAIN -Iinclude -Ilibmoe \
		-Itools/moe-server -Itools/common $(PKG_CFLAGS) $(SERVER_CFLAGS) -fsanitize=fuzzer \
		$(FUZZ_SAN) -o $@ $< $(filter tools/moe-server/%.c %/schema.c %/strbuf.c,$^) $(FUZZ_LIB) \
		$(PKG_LIBS) $(SERVER_LIBS) -lm -ldl -pthread
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(BUILD)/fuzz/corpus-$$t; \
		echo "fuzzing $$t for $(FUZZ_TIME)s (new inputs in $(BUILD)/fuzz/corpus-$$t)"; \
		$(BUILD)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_TIME) -max_len=65536 \
			$(BUILD)/fuzz/corpus-$$t tests/fuzz/corpus/$$t || exit 1; \
	done

clean:
	rm -rf build build-san build-tsan build-san-tsan

-include $(LIB_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(SIMT_OBJS:.o=.d) $(SIMT_SOS:.so=.d) \
	$(wildcard $(BUILD)/obj/tools/*.d $(BUILD)/obj/tools/*/*.d)
