/* SPDX-License-Identifier: MIT */
/*
 * moectl topo [--json] [PATH]: NUMA nodes, disks and GPUs as hwloc sees
 * them, and which disk and node a model file lives on, so an operator can
 * check where the engine will place its threads and staging memory.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "moectl.h"

#define MAX_NODES 64
#define MAX_DEVS 128

static void node_str(int node, char *buf, size_t len)
{
	if (node >= 0)
		snprintf(buf, len, "node %d", node);
	else
		snprintf(buf, len, "node ?");
}

static void print_text(const struct moe_topo_info *ti, const struct moe_topo_node *nodes,
		       int n_nodes, const struct moe_topo_device *devs, int n_devs,
		       const char *path, const struct moe_topo_device *pd, int path_node)
{
	char hb[32], ns[16];
	bool gpu = false;

	printf("hwloc %s: %u NUMA node%s, %u package%s, %u cores, %u PUs\n", ti->hwloc_version,
	       ti->n_numa, ti->n_numa == 1 ? "" : "s", ti->n_packages,
	       ti->n_packages == 1 ? "" : "s", ti->n_cores, ti->n_pus);
	for (int i = 0; i < n_nodes && i < MAX_NODES; i++)
		printf("node %d: cpus %s, %s\n", nodes[i].node, nodes[i].cpus,
		       human_bytes(nodes[i].mem_bytes, hb, sizeof(hb)));
	printf("devices:\n");
	for (int i = 0; i < n_devs && i < MAX_DEVS; i++) {
		node_str(devs[i].numa_node, ns, sizeof(ns));
		printf("  %-12s %-7s %-13s %s\n", devs[i].name, devs[i].kind,
		       devs[i].pci[0] ? devs[i].pci : "-", ns);
		gpu |= !strcmp(devs[i].kind, "gpu") || !strcmp(devs[i].kind, "coproc");
	}
	if (!n_devs)
		printf("  (none found)\n");
	if (!gpu)
		printf("  no GPU found: the CPU backend is the device\n");
	if (path) {
		node_str(path_node, ns, sizeof(ns));
		printf("%s: on %s (%s), %s\n", path, pd->name, pd->kind, ns);
	}
}

static int print_json(const struct moe_topo_info *ti, const struct moe_topo_node *nodes,
		      int n_nodes, const struct moe_topo_device *devs, int n_devs,
		      const char *path, const struct moe_topo_device *pd, int path_node)
{
	json_t *o = json_object(), *jn = json_array(), *jd = json_array();

	tj_set(o, "hwloc", tj_str(ti->hwloc_version));
	tj_set(o, "packages", tj_u64(ti->n_packages));
	tj_set(o, "cores", tj_u64(ti->n_cores));
	tj_set(o, "pus", tj_u64(ti->n_pus));
	for (int i = 0; i < n_nodes && i < MAX_NODES; i++) {
		json_t *n = json_object();

		tj_set(n, "node", tj_i64(nodes[i].node));
		tj_set(n, "cpus", tj_str(nodes[i].cpus));
		tj_set(n, "mem_bytes", tj_u64(nodes[i].mem_bytes));
		tj_push(jn, n);
	}
	tj_set(o, "numa_nodes", jn);
	for (int i = 0; i < n_devs && i < MAX_DEVS; i++) {
		json_t *d = json_object();

		tj_set(d, "name", tj_str(devs[i].name));
		tj_set(d, "kind", tj_str(devs[i].kind));
		tj_set(d, "pci", tj_str(devs[i].pci));
		tj_set(d, "numa_node", tj_i64(devs[i].numa_node));
		tj_push(jd, d);
	}
	tj_set(o, "devices", jd);
	if (path) {
		json_t *p = json_object();

		tj_set(p, "path", tj_str(path));
		tj_set(p, "device", tj_str(pd->name));
		tj_set(p, "kind", tj_str(pd->kind));
		tj_set(p, "numa_node", tj_i64(path_node));
		tj_set(o, "path", p);
	}
	return tj_print(o);
}

int do_topo(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct moe_topo_node nodes[MAX_NODES];
	struct moe_topo_device *devs, pd;
	struct moe_topo_info ti;
	const char *path = NULL;
	int c, n_nodes, n_devs, path_node = -1, ret;

	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json_output = true;
			break;
		case 'h':
			printf("usage: moectl topo [--json] [PATH]\n"
			       "NUMA nodes, disks and GPUs (hwloc); with PATH, the disk and node "
			       "it lives on\n");
			return 0;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind < argc - 1)
		return usage_error("topo: one PATH at most; try `moectl topo --help`");
	if (optind < argc)
		path = argv[optind];

	ret = moe_topo_info(&ti);
	if (ret < 0)
		return fail("topo: %s", moe_errmsg());
	n_nodes = moe_topo_nodes(nodes, MAX_NODES);
	if (n_nodes < 0)
		return fail("topo: %s", moe_errmsg());
	devs = calloc(MAX_DEVS, sizeof(*devs));
	if (!devs)
		return fail("topo: out of memory");
	n_devs = moe_topo_devices(devs, MAX_DEVS);
	if (n_devs < 0) {
		free(devs);
		return fail("topo: %s", moe_errmsg());
	}
	if (path) {
		ret = moe_topo_path(path, &pd);
		if (ret < 0) {
			free(devs);
			return fail("topo: %s", moe_errmsg());
		}
		path_node = moe_topo_path_node(path);
		if (path_node < 0)
			path_node = -1;
	}
	ret = 0;
	if (json_output)
		ret = print_json(&ti, nodes, n_nodes, devs, n_devs, path, &pd, path_node);
	else
		print_text(&ti, nodes, n_nodes, devs, n_devs, path, &pd, path_node);
	free(devs);
	return ret;
}
