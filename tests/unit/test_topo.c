/* SPDX-License-Identifier: MIT */
/*
 * moectl topo on a machine of the test's making: a fake sysfs tree
 * (MOE_SYSFS_ROOT) with two NUMA nodes, a GPU on node 0 and two NVMe drives,
 * one per node, the model file on a partition of the drive of node 1.  Text
 * and --json must name the links, nodes, distances, the drive holding the
 * model and the placement (the GPU's node, with a note that reads cross
 * nodes); without the GPU the placement follows the model's drive.  The
 * CUDA device list is checked in-process against the fake CUDA driver, and
 * topo runs on the real machine too.
 */
#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <jansson.h>

#include "backend/cuda_api.h"
#include "fake_cuda.h"
#include "moe/moe.h"
#include "testutil.h"

static struct {
	char dir[PATH_MAX];
	char sys[PATH_MAX + 8];
	char model[PATH_MAX + 16];
} fx;

static void mkdirs(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void mkdirs(const char *fmt, ...)
{
	char path[2 * PATH_MAX], cmd[2 * PATH_MAX + 16];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(path, sizeof(path), fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", path);
	ck_assert_int_eq(tu_run(cmd, 0, NULL), 0);
}

/* sysfs attribute @name of directory @dir (relative to the fake root) with a newline */
static void attr(const char *dir, const char *name, const char *val)
{
	char path[2 * PATH_MAX], text[512];

	snprintf(path, sizeof(path), "%s/%s/%s", fx.sys, dir, name);
	snprintf(text, sizeof(text), "%s\n", val);
	ck_assert_int_eq(tu_write_file(path, text, strlen(text)), 0);
}

static void link_to(const char *target, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void link_to(const char *target, const char *fmt, ...)
{
	char rel[PATH_MAX], path[3 * PATH_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rel, sizeof(rel), fmt, ap);
	va_end(ap);
	snprintf(path, sizeof(path), "%s/%s", fx.sys, rel);
	ck_assert_msg(symlink(target, path) == 0, "symlink %s: %s", path, strerror(errno));
}

static void pci_dev(const char *dir, const char *cls, const char *vendor, const char *device,
		    const char *node, const char *speed, const char *width, const char *max_speed,
		    const char *max_width)
{
	mkdirs("%s/%s", fx.sys, dir);
	attr(dir, "class", cls);
	attr(dir, "vendor", vendor);
	attr(dir, "device", device);
	attr(dir, "numa_node", node);
	attr(dir, "current_link_speed", speed);
	attr(dir, "current_link_width", width);
	attr(dir, "max_link_speed", max_speed);
	attr(dir, "max_link_width", max_width);
}

#define GPU "devices/pci0000:00/0000:17:00.0"
#define NV0 "devices/pci0000:00/0000:65:00.0"
#define NV1 "devices/pci0000:80/0000:b3:00.0"

static void setup(void)
{
	char *dir = tu_tmpdir(), cmd[3 * PATH_MAX];
	struct stat st;

	ck_assert_ptr_nonnull(dir);
	snprintf(fx.dir, sizeof(fx.dir), "%s", dir);
	free(dir);
	snprintf(fx.sys, sizeof(fx.sys), "%s/sys", fx.dir);
	snprintf(fx.model, sizeof(fx.model), "%s/m.gguf", fx.dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --layers 1 --embd 64 --heads 2 --kv-heads 1 "
		 "--head-dim 32 --experts 4 --expert-ff 64 -q -o %s", tu_bin("moe-mkmodel"),
		 fx.model);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);

	for (int n = 0; n < 2; n++) {
		char d[64], mem[64];

		snprintf(d, sizeof(d), "devices/system/node/node%d", n);
		mkdirs("%s/%s", fx.sys, d);
		attr(d, "cpulist", n ? "4-7" : "0-3");
		snprintf(mem, sizeof(mem), "Node %d MemTotal:       %d kB\nNode %d MemFree: 1 kB", n,
			 (n + 1) << 20, n);
		attr(d, "meminfo", mem);
		attr(d, "distance", n ? "21 10" : "10 21");
	}
	pci_dev(GPU, "0x030200", "0x10de", "0x2335", "0", "32.0 GT/s PCIe", "16",
		"32.0 GT/s PCIe", "16");
	mkdirs("%s/" GPU "/drm/card1", fx.sys);
	mkdirs("%s/" GPU "/drm/renderD129", fx.sys);
	link_to("../../../bus/pci/drivers/nvidia", GPU "/driver");
	pci_dev(NV0, "0x010802", "0x144d", "0xa80a", "0", "16.0 GT/s PCIe", "4",
		"16.0 GT/s PCIe", "4");
	pci_dev(NV1, "0x010802", "0x1e0f", "0x0011", "1", "8.0 GT/s PCIe", "4",
		"16.0 GT/s PCIe", "4");
	/* not a GPU: a network card on node 1 */
	pci_dev("devices/pci0000:80/0000:b4:00.0", "0x020000", "0x15b3", "0x1021", "1",
		"16.0 GT/s PCIe", "16", "16.0 GT/s PCIe", "16");
	for (int n = 0; n < 2; n++) {
		char c[128], ns[160];
		const char *pci = n ? NV1 : NV0;

		snprintf(c, sizeof(c), "%s/nvme/nvme%d", pci, n);
		snprintf(ns, sizeof(ns), "%s/nvme%dn1", c, n);
		mkdirs("%s/%s", fx.sys, ns);
		attr(c, "model", n ? "KIOXIA CM7    " : "Samsung PM1743");
		attr(c, "transport", "pcie");
		/* the controller's device link points at its PCI function */
		link_to(n ? "../../../0000:b3:00.0" : "../../../0000:65:00.0", "%s/device", c);
		attr(ns, "dev", n ? "259:1" : "259:0");
	}
	/* the model on partition 1 of nvme1n1 */
	mkdirs("%s/" NV1 "/nvme/nvme1/nvme1n1/nvme1n1p1", fx.sys);
	attr(NV1 "/nvme/nvme1/nvme1n1/nvme1n1p1", "partition", "1");
	mkdirs("%s/bus/pci/devices", fx.sys);
	mkdirs("%s/class/nvme", fx.sys);
	mkdirs("%s/block", fx.sys);
	mkdirs("%s/dev/block", fx.sys);
	link_to("../../../" GPU, "bus/pci/devices/0000:17:00.0");
	link_to("../../../" NV0, "bus/pci/devices/0000:65:00.0");
	link_to("../../../" NV1, "bus/pci/devices/0000:b3:00.0");
	link_to("../../../devices/pci0000:80/0000:b4:00.0", "bus/pci/devices/0000:b4:00.0");
	link_to("../../" NV0 "/nvme/nvme0", "class/nvme/nvme0");
	link_to("../../" NV1 "/nvme/nvme1", "class/nvme/nvme1");
	link_to("../" NV0 "/nvme/nvme0/nvme0n1", "block/nvme0n1");
	link_to("../" NV1 "/nvme/nvme1/nvme1n1", "block/nvme1n1");
	ck_assert_int_eq(stat(fx.model, &st), 0);
	link_to("../../" NV1 "/nvme/nvme1/nvme1n1/nvme1n1p1", "dev/block/%u:%u",
		major(st.st_dev), minor(st.st_dev));
	setenv("MOE_SYSFS_ROOT", fx.sys, 1);
	/* no CUDA driver, whatever this machine has: the fake tree's GPU is PCI only */
	setenv("MOE_CUDA_LIBRARY", "/nonexistent/libcuda.so.1", 1);
}

static void teardown(void)
{
	unsetenv("MOE_SYSFS_ROOT");
	unsetenv("MOE_CUDA_LIBRARY");
	tu_rmtree(fx.dir);
}

static int topo(char **out, const char *args)
{
	char cmd[3 * PATH_MAX];

	snprintf(cmd, sizeof(cmd), "%s topo %s", tu_bin("moectl"), args);
	return tu_run(cmd, 0, out);
}

static void has(const char *out, const char *want)
{
	ck_assert_msg(strstr(out, want), "no '%s' in:\n%s", want, out);
}

START_TEST(fake_machine_text)
{
	char args[PATH_MAX + 64], *out = NULL;

	snprintf(args, sizeof(args), "-m %s", fx.model);
	ck_assert_int_eq(topo(&out, args), 0);
	has(out, "NUMA nodes: 2 (sysfs of ");
	has(out, "node 0: cpus 0-3, 1.00 GiB, distances 10 21");
	has(out, "node 1: cpus 4-7, 2.00 GiB, distances 21 10");
	has(out, "0000:17:00.0  NVIDIA [10de:2335]  node 0  PCIe 5 x16 (63.0 GB/s)");
	has(out, "driver nvidia  card1 renderD129");
	has(out, "nvme0  Samsung PM1743  0000:65:00.0  node 0  PCIe 4 x4 (7.9 GB/s)  nvme0n1");
	has(out, "nvme1  KIOXIA CM7  0000:b3:00.0  node 1  PCIe 3 x4 (3.9 GB/s), max 4 x4: "
	    "running below  nvme1n1");
	ck_assert_msg(!strstr(out, "0000:b4:00.0"), "a network card listed as a GPU:\n%s", out);
	has(out, ": on nvme1n1 (nvme1), node 1");
	has(out, "placement: staging memory on node 0, I/O threads on CPUs 0-3 (the node of GPU "
	    "0000:17:00.0");
	has(out, "the GPU on node 0: every expert read crosses between nodes; a drive of the "
	    "GPU's node: nvme0");
	has(out, "default (numa_node -1) is node 1");
	free(out);

	/* the same file given as PATH */
	snprintf(args, sizeof(args), "%s", fx.model);
	ck_assert_int_eq(topo(&out, args), 0);
	has(out, ": on nvme1n1 (nvme1), node 1");
	free(out);
}
END_TEST

static json_t *topo_json(const char *args)
{
	char *out = NULL;
	json_error_t e;
	json_t *doc;

	ck_assert_int_eq(topo(&out, args), 0);
	doc = json_loads(out, 0, &e);
	ck_assert_msg(doc, "not JSON (%s): %s", e.text, out);
	free(out);
	return doc;
}

static json_int_t iget(json_t *o, const char *path)
{
	char buf[256], *save = NULL;
	json_t *v = o;

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *k = strtok_r(buf, ".", &save); k && v; k = strtok_r(NULL, ".", &save))
		v = *k >= '0' && *k <= '9' ? json_array_get(v, (size_t)atoi(k)) :
		    json_object_get(v, k);
	ck_assert_msg(json_is_integer(v), "%s is not an integer", path);
	return json_integer_value(v);
}

static const char *sget(json_t *o, const char *path)
{
	char buf[256], *save = NULL;
	json_t *v = o;

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *k = strtok_r(buf, ".", &save); k && v; k = strtok_r(NULL, ".", &save))
		v = *k >= '0' && *k <= '9' ? json_array_get(v, (size_t)atoi(k)) :
		    json_object_get(v, k);
	ck_assert_msg(json_is_string(v), "%s is not a string", path);
	return json_string_value(v);
}

START_TEST(fake_machine_json)
{
	char args[PATH_MAX + 64], cmd[3 * PATH_MAX];
	json_t *doc;

	snprintf(args, sizeof(args), "--json -m %s", fx.model);
	doc = topo_json(args);
	ck_assert_int_eq(json_array_size(json_object_get(doc, "numa_nodes")), 2);
	ck_assert_int_eq(iget(doc, "numa_nodes.1.node"), 1);
	ck_assert_int_eq(iget(doc, "numa_nodes.1.mem_bytes"), 2ll << 30);
	ck_assert_int_eq(iget(doc, "numa_nodes.1.distances.0"), 21);
	ck_assert_int_eq(json_array_size(json_object_get(doc, "gpus")), 1);
	ck_assert_str_eq(sget(doc, "gpus.0.pci"), "0000:17:00.0");
	ck_assert_str_eq(sget(doc, "gpus.0.vendor"), "NVIDIA");
	ck_assert_str_eq(sget(doc, "gpus.0.vendor_id"), "0x10de");
	ck_assert_str_eq(sget(doc, "gpus.0.driver"), "nvidia");
	ck_assert_str_eq(sget(doc, "gpus.0.drm.0"), "card1");
	ck_assert_int_eq(iget(doc, "gpus.0.numa_node"), 0);
	ck_assert_int_eq(iget(doc, "gpus.0.link.gen"), 5);
	ck_assert_int_eq(iget(doc, "gpus.0.link.width"), 16);
	ck_assert_str_eq(sget(doc, "gpus.0.link.max_speed"), "32.0 GT/s PCIe");
	ck_assert(json_is_null(json_object_get(json_array_get(json_object_get(doc, "gpus"), 0),
					       "cuda")));
	ck_assert_int_eq(iget(doc, "cuda.devices"), 0);
	ck_assert_int_eq(json_array_size(json_object_get(doc, "nvme")), 2);
	ck_assert_str_eq(sget(doc, "nvme.1.name"), "nvme1");
	ck_assert_str_eq(sget(doc, "nvme.1.model"), "KIOXIA CM7");
	ck_assert_str_eq(sget(doc, "nvme.1.pci"), "0000:b3:00.0");
	ck_assert_int_eq(iget(doc, "nvme.1.numa_node"), 1);
	ck_assert_int_eq(iget(doc, "nvme.1.link.gen"), 3);
	ck_assert_int_eq(iget(doc, "nvme.1.link.max_width"), 4);
	ck_assert_str_eq(sget(doc, "nvme.1.block.0"), "nvme1n1");
	ck_assert_str_eq(sget(doc, "path.device"), "nvme1n1");
	ck_assert_str_eq(sget(doc, "path.nvme"), "nvme1");
	ck_assert_int_eq(iget(doc, "path.numa_node"), 1);
	ck_assert_int_eq(iget(doc, "placement.staging_node"), 0);
	ck_assert_str_eq(sget(doc, "placement.io_cpus"), "0-3");
	ck_assert_int_eq(iget(doc, "placement.engine_default_node"), 1);
	ck_assert_ptr_nonnull(strstr(sget(doc, "placement.note"), "nvme0"));
	json_decref(doc);

	/* without the GPU, staging follows the drive that holds the model */
	snprintf(cmd, sizeof(cmd), "mv %s/bus/pci/devices/0000:17:00.0 %s/gpu.off", fx.sys,
		 fx.dir);
	ck_assert_int_eq(tu_run(cmd, 0, NULL), 0);
	doc = topo_json(args);
	ck_assert_int_eq(json_array_size(json_object_get(doc, "gpus")), 0);
	ck_assert_int_eq(iget(doc, "placement.staging_node"), 1);
	ck_assert_str_eq(sget(doc, "placement.io_cpus"), "4-7");
	ck_assert_ptr_nonnull(strstr(sget(doc, "placement.why"), "nvme1"));
	ck_assert(json_is_null(json_object_get(json_object_get(doc, "placement"), "note")));
	json_decref(doc);
	/* ... and without a model, the first NVMe drive's */
	doc = topo_json("--json");
	ck_assert_int_eq(iget(doc, "placement.staging_node"), 0);
	ck_assert_ptr_nonnull(strstr(sget(doc, "placement.why"), "nvme0"));
	ck_assert_ptr_null(json_object_get(doc, "path"));
	json_decref(doc);
	snprintf(cmd, sizeof(cmd), "mv %s/gpu.off %s/bus/pci/devices/0000:17:00.0", fx.dir,
		 fx.sys);
	ck_assert_int_eq(tu_run(cmd, 0, NULL), 0);
}
END_TEST

START_TEST(bad_roots_and_args)
{
	char *out = NULL, cmd[3 * PATH_MAX];

	/* a file not on a block device this sysfs knows */
	ck_assert_int_eq(topo(&out, "-m /proc/self/status"), 0);
	has(out, "not on a block device");
	free(out);
	snprintf(cmd, sizeof(cmd), "MOE_SYSFS_ROOT=%s/none %s topo 2>&1", fx.dir,
		 tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 0, &out), 1);
	has(out, "MOE_SYSFS_ROOT names a directory laid out as /sys");
	free(out);
	/* an empty tree: nothing found, still an answer */
	snprintf(cmd, sizeof(cmd), "MOE_SYSFS_ROOT=%s %s topo 2>&1", fx.dir, tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	has(out, "NUMA nodes: 0");
	has(out, "placement: no recommendation");
	free(out);
	ck_assert_int_eq(topo(&out, "-m /nonexistent/m.gguf 2>&1"), 1);
	has(out, "/nonexistent/m.gguf");
	free(out);
	ck_assert_int_eq(topo(NULL, "-m a b 2>/dev/null"), 2);
	ck_assert_int_eq(topo(NULL, "a b 2>/dev/null"), 2);
	ck_assert_int_eq(topo(NULL, "-m a -m b 2>/dev/null"), 2);
	ck_assert_int_eq(topo(NULL, "--bogus 2>/dev/null"), 2);
}
END_TEST

/* The real machine: whatever it has, topo answers in both forms. */
START_TEST(real_machine)
{
	char cmd[3 * PATH_MAX], *out = NULL;
	json_error_t e;
	json_t *doc;

	snprintf(cmd, sizeof(cmd), "env -u MOE_SYSFS_ROOT -u MOE_CUDA_LIBRARY %s topo -m %s",
		 tu_bin("moectl"), fx.model);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	has(out, "NUMA nodes: ");
	has(out, "placement: ");
	free(out);
	snprintf(cmd, sizeof(cmd), "env -u MOE_SYSFS_ROOT -u MOE_CUDA_LIBRARY %s topo --json",
		 tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	doc = json_loads(out, 0, &e);
	ck_assert_msg(doc && json_array_size(json_object_get(doc, "numa_nodes")) >= 1, "%s", out);
	ck_assert_str_eq(json_string_value(json_object_get(doc, "sysfs")), "/sys");
	json_decref(doc);
	free(out);
}
END_TEST

/* moe_cuda_devices against the fake CUDA driver, and without a driver. */
START_TEST(cuda_devices)
{
	static char path[PATH_MAX];
	const char *build = getenv("MOE_BUILD");
	struct simt_fake_config cfg = {
		.name = "Fake H200", .pci_bus_id = "0000:AB:00.0", .total_mem = 3ull << 30,
		.cc_major = 9, .cc_minor = 0, .sm_count = 132,
	};
	void (*bind)(const struct moe_cuda_api *);
	struct moe_cuda_device d[2];
	struct moe_cuda_api api;
	void *lib, *sym;

	ck_assert_int_eq(moe_cuda_devices(d, 2), -ENOENT);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "no CUDA driver"));
	snprintf(path, sizeof(path), "%s/tests/libcuda_fake.so", build ? build : "build");
	lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	ck_assert_msg(lib != NULL, "%s", dlerror());
	sym = dlsym(lib, "simt_libcuda_bind");
	ck_assert_ptr_nonnull(sym);
	memcpy(&bind, &sym, sizeof(bind));
	simt_fake_cuda_reset(&cfg);
	simt_fake_cuda_api(&api);
	bind(&api);
	setenv("MOE_CUDA_LIBRARY", path, 1);
	memset(d, 0x55, sizeof(d));
	ck_assert_int_eq(moe_cuda_devices(d, 2), 1);
	ck_assert_str_eq(d[0].name, "Fake H200");
	ck_assert_str_eq(d[0].pci, "0000:ab:00.0");
	ck_assert_uint_eq(d[0].total_mem, 3ull << 30);
	ck_assert_int_eq(d[0].cc_major, 9);
	ck_assert_int_eq(d[0].sm_count, 132);
	ck_assert_int_eq(moe_cuda_devices(NULL, 0), 1);
	ck_assert_int_eq(moe_cuda_devices(NULL, 1), -EINVAL);
	cfg.no_device = 1;
	simt_fake_cuda_reset(&cfg);
	ck_assert_int_eq(moe_cuda_devices(d, 2), -ENODEV);
	simt_fake_cuda_reset(NULL);
	setenv("MOE_CUDA_LIBRARY", "/nonexistent/libcuda.so.1", 1);
}
END_TEST

Suite *suite_topo(void)
{
	Suite *s = suite_create("topo");
	TCase *tc = tcase_create("topo");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, fake_machine_text);
	tcase_add_test(tc, fake_machine_json);
	tcase_add_test(tc, bad_roots_and_args);
	tcase_add_test(tc, real_machine);
	tcase_add_test(tc, cuda_devices);
	suite_add_tcase(s, tc);
	return s;
}
