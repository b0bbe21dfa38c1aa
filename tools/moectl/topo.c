/* SPDX-License-Identifier: MIT */
/*
 * moectl topo [--json] [-m MODEL | PATH]: NUMA nodes and their distances,
 * GPUs and NVMe drives with their PCIe links and nodes, the disk a model
 * lives on, and where staging memory and I/O threads belong: on the node of
 * the GPU the experts go to, or of the drive they come from when there is
 * no GPU.  The facts come from topo_scan.c.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "moectl.h"
#include "topo.h"

struct placement {
	int node;                    /* -1: no recommendation */
	char cpus[256];
	char why[256];
	char note[512];              /* a mismatch worth fixing, "" for none */
	int engine_node;             /* what the I/O engine picks by default (numa_node -1) */
};

static const struct topo_node *node_of(const struct topo *t, int id)
{
	for (int i = 0; i < t->n_nodes; i++)
		if (t->nodes[i].id == id)
			return &t->nodes[i];
	return NULL;
}

/* The GPU the engine would run on: CUDA device 0 where the driver knows it, else the first. */
static const struct topo_gpu *main_gpu(const struct topo *t)
{
	for (int i = 0; i < t->n_gpus; i++)
		if (t->gpus[i].cuda == 0)
			return &t->gpus[i];
	for (int i = 0; i < t->n_gpus; i++)
		if (t->gpus[i].pci.node >= 0)
			return &t->gpus[i];
	return t->n_gpus ? &t->gpus[0] : NULL;
}

static void place(const struct topo *t, const struct topo_file *f, const char *path,
		  struct placement *p)
{
	const struct topo_gpu *g = main_gpu(t);
	const struct topo_node *n;

	memset(p, 0, sizeof(*p));
	p->node = -1;
	if (g && g->pci.node >= 0) {
		p->node = g->pci.node;
		snprintf(p->why, sizeof(p->why), "the node of GPU %s, where the experts go",
			 g->pci.addr);
	} else if (f && f->on_disk && f->node >= 0) {
		p->node = f->node;
		snprintf(p->why, sizeof(p->why), "no GPU on a known node: the node of %s, which "
			 "holds the model", f->nvme[0] ? f->nvme : f->disk);
	} else {
		for (int i = 0; i < t->n_nvme && p->node < 0; i++)
			if (t->nvme[i].pci.node >= 0) {
				p->node = t->nvme[i].pci.node;
				snprintf(p->why, sizeof(p->why), "no GPU on a known node: the node "
					 "of %s, the first NVMe drive", t->nvme[i].name);
			}
	}
	if (p->node < 0 && t->n_nodes == 1) {
		p->node = t->nodes[0].id;
		snprintf(p->why, sizeof(p->why), "one NUMA node: nothing to choose");
	}
	if (p->node < 0)
		snprintf(p->why, sizeof(p->why), "the nodes of the GPU and the drives are unknown");
	n = p->node >= 0 ? node_of(t, p->node) : NULL;
	snprintf(p->cpus, sizeof(p->cpus), "%s", n ? n->cpus : "");
	/* moe_io_open with numa_node -1: the file's node, else the GPU's */
	p->engine_node = f && f->node >= 0 ? f->node : g && g->pci.node >= 0 ? g->pci.node :
			 t->n_nodes == 1 ? t->nodes[0].id : -1;
	if (g && g->pci.node >= 0 && f && f->on_disk && f->node >= 0 && f->node != g->pci.node) {
		size_t len = (size_t)snprintf(p->note, sizeof(p->note), "%s is on node %d (%s), "
					      "the GPU on node %d: every expert read crosses "
					      "between nodes", path, f->node,
					      f->nvme[0] ? f->nvme : f->disk, g->pci.node);

		for (int i = 0; i < t->n_nvme && len < sizeof(p->note); i++)
			if (t->nvme[i].pci.node == g->pci.node)
				len += (size_t)snprintf(p->note + len, sizeof(p->note) - len,
							"%s%s", len && !strstr(p->note, "; a drive") ?
							"; a drive of the GPU's node: " : ", ",
							t->nvme[i].name);
	}
}

static void gpu_name(const struct topo *t, const struct topo_gpu *g, char *buf, size_t len)
{
	const char *v = topo_vendor(g->pci.vendor);

	if (g->cuda >= 0 && t->cuda[g->cuda].name[0])
		snprintf(buf, len, "%s", t->cuda[g->cuda].name);
	else if (v)
		snprintf(buf, len, "%s [%04x:%04x]", v, g->pci.vendor, g->pci.device);
	else
		snprintf(buf, len, "[%04x:%04x]", g->pci.vendor, g->pci.device);
}

static void link_str(const struct topo_link *l, char *buf, size_t len)
{
	double gbps, max_gbps;
	int gen = topo_link_gen(l->speed, &gbps, l->width);
	int max_gen = topo_link_gen(l->max_speed, &max_gbps, l->max_width);

	if (!l->speed[0] || !gen) {
		snprintf(buf, len, "PCIe link unknown");
		return;
	}
	snprintf(buf, len, "PCIe %d x%d (%.1f GB/s)", gen, l->width, gbps);
	if (max_gen && (max_gen != gen || l->max_width != l->width))
		snprintf(buf + strlen(buf), len - strlen(buf), ", max %d x%d: running below",
			 max_gen, l->max_width);
}

static void node_str(int node, char *buf, size_t len)
{
	if (node >= 0)
		snprintf(buf, len, "node %d", node);
	else
		snprintf(buf, len, "node ?");
}

static void print_text(const struct topo *t, const struct moe_topo_info *hw, const char *path,
		       const struct topo_file *f, const struct placement *p)
{
	char b1[32], ns[16], ls[96], name[160];

	printf("NUMA nodes: %d", t->n_nodes);
	if (hw)
		printf(" (hwloc %s: %u package%s, %u cores, %u PUs)", hw->hwloc_version,
		       hw->n_packages, hw->n_packages == 1 ? "" : "s", hw->n_cores, hw->n_pus);
	if (t->fake)
		printf(" (sysfs of %s)", t->root);
	printf("\n");
	for (int i = 0; i < t->n_nodes; i++) {
		const struct topo_node *n = &t->nodes[i];

		printf("  node %d: cpus %s, %s", n->id, n->cpus[0] ? n->cpus : "none",
		       human_bytes(n->mem_bytes, b1, sizeof(b1)));
		if (n->n_dist) {
			printf(", distances");
			for (int k = 0; k < n->n_dist; k++)
				printf(" %d", n->dist[k]);
		}
		printf("\n");
	}
	printf("GPUs:\n");
	for (int i = 0; i < t->n_gpus; i++) {
		const struct topo_gpu *g = &t->gpus[i];

		gpu_name(t, g, name, sizeof(name));
		node_str(g->pci.node, ns, sizeof(ns));
		link_str(&g->pci.link, ls, sizeof(ls));
		printf("  %s  %s  %s  %s", g->pci.addr, name, ns, ls);
		if (g->cuda >= 0)
			printf("  cuda%d %s sm_%d%d", g->cuda,
			       human_bytes(t->cuda[g->cuda].total_mem, b1, sizeof(b1)),
			       t->cuda[g->cuda].cc_major, t->cuda[g->cuda].cc_minor);
		if (g->pci.driver[0] || g->drm_driver[0])
			printf("  driver %s", g->drm_driver[0] ? g->drm_driver : g->pci.driver);
		if (g->pci.drm[0])
			printf("  %s", g->pci.drm);
		printf("\n");
	}
	if (!t->n_gpus)
		printf("  none on PCI: the CPU backend is the device\n");
	for (int i = 0; i < t->n_cuda; i++) {
		bool matched = false;

		for (int j = 0; j < t->n_gpus; j++)
			matched |= t->gpus[j].cuda == i;
		if (!matched)
			printf("  cuda%d  %s  %s  (PCI %s not in sysfs)\n", i, t->cuda[i].name,
			       human_bytes(t->cuda[i].total_mem, b1, sizeof(b1)), t->cuda[i].pci);
	}
	if (t->cuda_ret)
		printf("  CUDA: %s\n", t->cuda_err);
	for (int i = 0; i < t->n_drm; i++)
		printf("  other DRM device: %s, driver %s%s%s\n", t->drm[i].nodes,
		       t->drm[i].driver[0] ? t->drm[i].driver : "?", t->drm[i].pci[0] ? ", PCI " :
		       "", t->drm[i].pci);
	printf("NVMe drives:\n");
	for (int i = 0; i < t->n_nvme; i++) {
		const struct topo_nvme *n = &t->nvme[i];

		node_str(n->pci.node, ns, sizeof(ns));
		if (n->has_pci)
			link_str(&n->pci.link, ls, sizeof(ls));
		else
			snprintf(ls, sizeof(ls), "over %s", n->transport[0] ? n->transport : "?");
		printf("  %s  %s  %s  %s  %s  %s\n", n->name, n->model[0] ? n->model : "?",
		       n->has_pci ? n->pci.addr : "-", ns, ls, n->blocks[0] ? n->blocks : "-");
	}
	if (!t->n_nvme)
		printf("  none\n");
	printf("other block devices:\n");
	for (int i = 0; i < t->n_disks; i++) {
		node_str(t->disks[i].node, ns, sizeof(ns));
		printf("  %s  %s  %s\n", t->disks[i].name,
		       t->disks[i].driver[0] ? t->disks[i].driver : "-", ns);
	}
	if (!t->n_disks)
		printf("  none\n");
	if (path) {
		node_str(f->node, ns, sizeof(ns));
		if (f->on_disk)
			printf("%s: on %s%s%s%s, %s\n", path, f->disk, f->nvme[0] ? " (" : "",
			       f->nvme, f->nvme[0] ? ")" : "", ns);
		else
			printf("%s: not on a block device (tmpfs, overlay or network filesystem)\n",
			       path);
	}
	if (p->node >= 0)
		printf("placement: staging memory on node %d, I/O threads on CPUs %s (%s)\n",
		       p->node, p->cpus[0] ? p->cpus : "?", p->why);
	else
		printf("placement: no recommendation (%s)\n", p->why);
	if (p->note[0])
		printf("  note: %s\n", p->note);
	if (path) {
		node_str(p->engine_node, ns, sizeof(ns));
		printf("  the I/O engine's default (numa_node -1) is %s: the file's drive, else "
		       "the GPU\n", ns);
	}
}

static json_t *link_json(const struct topo_link *l)
{
	json_t *o = json_object();
	double gbps = 0;
	int gen = topo_link_gen(l->speed, &gbps, l->width);

	tj_set(o, "speed", l->speed[0] ? tj_str(l->speed) : json_null());
	tj_set(o, "width", tj_i64(l->width));
	tj_set(o, "max_speed", l->max_speed[0] ? tj_str(l->max_speed) : json_null());
	tj_set(o, "max_width", tj_i64(l->max_width));
	tj_set(o, "gen", gen ? tj_i64(gen) : json_null());
	tj_set(o, "gbps", gen ? tj_real(gbps) : json_null());
	return o;
}

static json_t *words_json(const char *s)
{
	json_t *a = json_array();
	char buf[256], *save = NULL;

	snprintf(buf, sizeof(buf), "%s", s);
	for (char *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save))
		tj_push(a, tj_str(w));
	return a;
}

static json_t *device_json(const char *name, const char *kind, const char *pci, int node)
{
	json_t *d = json_object();

	tj_set(d, "name", tj_str(name));
	tj_set(d, "kind", tj_str(kind));
	tj_set(d, "pci", tj_str(pci));
	tj_set(d, "numa_node", tj_i64(node));
	return d;
}

static int print_json(const struct topo *t, const struct moe_topo_info *hw, const char *path,
		      const struct topo_file *f, const struct placement *p)
{
	json_t *o = json_object(), *jn = json_array(), *jg = json_array(), *jv = json_array();
	json_t *jd = json_array(), *jo = json_array(), *pl = json_object(), *cu = json_object();
	char name[160];

	tj_set(o, "sysfs", tj_str(t->root));
	tj_set(o, "hwloc", hw ? tj_str(hw->hwloc_version) : json_null());
	if (hw) {
		tj_set(o, "packages", tj_u64(hw->n_packages));
		tj_set(o, "cores", tj_u64(hw->n_cores));
		tj_set(o, "pus", tj_u64(hw->n_pus));
	}
	for (int i = 0; i < t->n_nodes; i++) {
		json_t *n = json_object(), *dist = json_array();

		tj_set(n, "node", tj_i64(t->nodes[i].id));
		tj_set(n, "cpus", tj_str(t->nodes[i].cpus));
		tj_set(n, "mem_bytes", tj_u64(t->nodes[i].mem_bytes));
		for (int k = 0; k < t->nodes[i].n_dist; k++)
			tj_push(dist, tj_i64(t->nodes[i].dist[k]));
		tj_set(n, "distances", dist);
		tj_push(jn, n);
	}
	tj_set(o, "numa_nodes", jn);
	for (int i = 0; i < t->n_gpus; i++) {
		const struct topo_gpu *g = &t->gpus[i];
		json_t *j = json_object();
		const char *v = topo_vendor(g->pci.vendor);

		gpu_name(t, g, name, sizeof(name));
		tj_set(j, "pci", tj_str(g->pci.addr));
		tj_set(j, "name", tj_str(name));
		tj_set(j, "vendor", v ? tj_str(v) : json_null());
		tj_set(j, "vendor_id", json_sprintf("0x%04x", g->pci.vendor));
		tj_set(j, "device_id", json_sprintf("0x%04x", g->pci.device));
		tj_set(j, "class", json_sprintf("0x%06x", g->pci.cls));
		tj_set(j, "driver", g->drm_driver[0] ? tj_str(g->drm_driver) :
		       g->pci.driver[0] ? tj_str(g->pci.driver) : json_null());
		tj_set(j, "drm", words_json(g->pci.drm));
		tj_set(j, "numa_node", tj_i64(g->pci.node));
		tj_set(j, "link", link_json(&g->pci.link));
		if (g->cuda >= 0) {
			const struct moe_cuda_device *c = &t->cuda[g->cuda];
			json_t *jc = json_object();

			tj_set(jc, "index", tj_i64(g->cuda));
			tj_set(jc, "name", tj_str(c->name));
			tj_set(jc, "memory_bytes", tj_u64(c->total_mem));
			tj_set(jc, "compute_capability", json_sprintf("%d.%d", c->cc_major,
								      c->cc_minor));
			tj_set(jc, "sm_count", tj_i64(c->sm_count));
			tj_set(j, "cuda", jc);
		} else {
			tj_set(j, "cuda", json_null());
		}
		tj_push(jg, j);
		tj_push(jd, device_json(g->pci.drm[0] ? g->pci.drm : g->pci.addr, "gpu",
					g->pci.addr, g->pci.node));
	}
	tj_set(o, "gpus", jg);
	tj_set(cu, "devices", tj_i64(t->n_cuda));
	tj_set(cu, "error", t->cuda_ret ? tj_str(t->cuda_err) : json_null());
	tj_set(o, "cuda", cu);
	for (int i = 0; i < t->n_drm; i++) {
		json_t *j = json_object();

		tj_set(j, "drm", words_json(t->drm[i].nodes));
		tj_set(j, "driver", tj_str(t->drm[i].driver));
		tj_set(j, "pci", tj_str(t->drm[i].pci));
		tj_push(jo, j);
	}
	tj_set(o, "drm_other", jo);
	for (int i = 0; i < t->n_nvme; i++) {
		const struct topo_nvme *n = &t->nvme[i];
		json_t *j = json_object();

		tj_set(j, "name", tj_str(n->name));
		tj_set(j, "model", tj_str(n->model));
		tj_set(j, "transport", tj_str(n->transport));
		tj_set(j, "pci", n->has_pci ? tj_str(n->pci.addr) : json_null());
		tj_set(j, "numa_node", tj_i64(n->pci.node));
		tj_set(j, "link", n->has_pci ? link_json(&n->pci.link) : json_null());
		tj_set(j, "block", words_json(n->blocks));
		tj_push(jv, j);
		tj_push(jd, device_json(n->name, "nvme", n->has_pci ? n->pci.addr : "",
					n->pci.node));
	}
	tj_set(o, "nvme", jv);
	for (int i = 0; i < t->n_disks; i++)
		tj_push(jd, device_json(t->disks[i].name, "block", "", t->disks[i].node));
	/* every GPU, NVMe controller and other disk in one list */
	tj_set(o, "devices", jd);
	if (path) {
		json_t *j = json_object();

		tj_set(j, "path", tj_str(path));
		tj_set(j, "device", f->on_disk ? tj_str(f->disk) : json_null());
		tj_set(j, "kind", tj_str(!f->on_disk ? "none" : f->nvme[0] ? "nvme" : "block"));
		tj_set(j, "nvme", f->nvme[0] ? tj_str(f->nvme) : json_null());
		tj_set(j, "numa_node", tj_i64(f->node));
		tj_set(o, "path", j);
	}
	tj_set(pl, "staging_node", p->node >= 0 ? tj_i64(p->node) : json_null());
	tj_set(pl, "io_cpus", p->cpus[0] ? tj_str(p->cpus) : json_null());
	tj_set(pl, "why", tj_str(p->why));
	tj_set(pl, "note", p->note[0] ? tj_str(p->note) : json_null());
	tj_set(pl, "engine_default_node", path ? tj_i64(p->engine_node) : json_null());
	tj_set(o, "placement", pl);
	return tj_print(o);
}

int do_topo(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "model", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct moe_topo_info hw;
	struct topo_file f = { .node = -1 };
	struct placement p;
	struct topo *t;
	const char *path = NULL;
	bool have_hw = false;
	int c, ret;

	while ((c = getopt_long(argc, argv, "jm:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json_output = true;
			break;
		case 'm':
			if (path)
				return usage_error("topo: one MODEL at most");
			path = optarg;
			break;
		case 'h':
			printf("usage: moectl topo [--json] [-m|--model MODEL | PATH]\n"
			       "NUMA nodes and distances, GPUs (PCIe link, node, CUDA name and "
			       "memory), NVMe drives\n(link, node, block devices), and where staging "
			       "memory and I/O threads belong;\nwith MODEL, the drive and node it is "
			       "on.  MOE_SYSFS_ROOT replaces /sys.\n");
			return 0;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind < argc && (path || optind < argc - 1))
		return usage_error("topo: one MODEL at most; try `moectl topo --help`");
	if (optind < argc)
		path = argv[optind];
	t = calloc(1, sizeof(*t));
	if (!t)
		return fail("topo: out of memory");
	ret = topo_scan(t);
	if (!ret && path)
		ret = topo_file(t, path, &f);
	/* hwloc reads the real machine: only beside the real sysfs */
	if (!ret && !t->fake)
		have_hw = moe_topo_info(&hw) == 0;
	if (!ret) {
		place(t, path ? &f : NULL, path, &p);
		if (json_output)
			ret = print_json(t, have_hw ? &hw : NULL, path, &f, &p);
		else
			print_text(t, have_hw ? &hw : NULL, path, &f, &p);
	}
	free(t);
	return ret;
}
