/* SPDX-License-Identifier: MIT */
/*
 * Topology through hwloc: which NUMA node a disk or GPU hangs off, and
 * binding the engine's threads and staging memory there.  The topology is
 * loaded once per process and only read afterwards (hwloc allows concurrent
 * readers).
 */
#include <dirent.h>
#include <errno.h>
#include <hwloc.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "io/io.h"
#include "util/util.h"

static hwloc_topology_t topo;
static int topo_err;
static pthread_once_t topo_once = PTHREAD_ONCE_INIT;

static void topo_load(void)
{
	if (hwloc_topology_init(&topo) < 0) {
		topo_err = -errno ? -errno : -ENOMEM;
		return;
	}
	/* Keep the disks and GPUs (OS devices), not every PCI bridge. */
	hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
	if (hwloc_topology_load(topo) < 0) {
		topo_err = -errno ? -errno : -EIO;
		hwloc_topology_destroy(topo);
		topo = NULL;
		moe_log(MOE_LOG_WARN, "hwloc could not load the topology: %s",
			strerror(-topo_err));
	}
}

static hwloc_topology_t get_topo(void)
{
	pthread_once(&topo_once, topo_load);
	return topo;
}

__attribute__((destructor)) static void topo_unload(void)
{
	if (topo)
		hwloc_topology_destroy(topo);
	topo = NULL;
}

static int need_topo(hwloc_topology_t *t)
{
	*t = get_topo();
	if (!*t)
		return moe_err(topo_err ? -topo_err : EIO,
			       "hwloc could not load the machine topology");
	return 0;
}

int moe_topo_info(struct moe_topo_info *out)
{
	hwloc_topology_t t;
	unsigned v = hwloc_get_api_version();
	int ret = need_topo(&t);

	if (ret < 0)
		return ret;
	memset(out, 0, sizeof(*out));
	out->n_numa = (uint32_t)MOE_MAX(hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE), 0);
	out->n_packages = (uint32_t)MOE_MAX(hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PACKAGE), 0);
	out->n_cores = (uint32_t)MOE_MAX(hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE), 0);
	out->n_pus = (uint32_t)MOE_MAX(hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU), 0);
	snprintf(out->hwloc_version, sizeof(out->hwloc_version), "%u.%u.%u", v >> 16,
		 (v >> 8) & 0xff, v & 0xff);
	return 0;
}

int moe_topo_nodes(struct moe_topo_node *out, uint32_t max)
{
	hwloc_topology_t t;
	int ret = need_topo(&t), n;

	if (ret < 0)
		return ret;
	n = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
	for (int i = 0; i < n && (uint32_t)i < max; i++) {
		hwloc_obj_t o = hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, (unsigned)i);

		memset(&out[i], 0, sizeof(out[i]));
		out[i].node = (int32_t)o->os_index;
		out[i].mem_bytes = o->attr ? o->attr->numanode.local_memory : 0;
		out[i].n_pus = (uint32_t)MOE_MAX(hwloc_bitmap_weight(o->cpuset), 0);
		hwloc_bitmap_list_snprintf(out[i].cpus, sizeof(out[i].cpus), o->cpuset);
	}
	return n;
}

/* NUMA node of an I/O object: the nodes of its nearest CPU-side ancestor. */
static int obj_node(hwloc_topology_t t, hwloc_obj_t o)
{
	hwloc_obj_t a = hwloc_get_non_io_ancestor_obj(t, o);

	if (!a || !a->nodeset || hwloc_bitmap_weight(a->nodeset) != 1)
		return -1;
	return hwloc_bitmap_first(a->nodeset);
}

static void fill_dev(hwloc_topology_t t, hwloc_obj_t o, struct moe_topo_device *d)
{
	const char *kind = "other";

	memset(d, 0, sizeof(*d));
	snprintf(d->name, sizeof(d->name), "%s", o->name ? o->name : "?");
	switch (o->attr->osdev.type) {
	case HWLOC_OBJ_OSDEV_BLOCK:
		kind = (o->subtype && !strcasecmp(o->subtype, "NVMe")) ||
		       !strncmp(d->name, "nvme", 4) ? "nvme" : "block";
		break;
	case HWLOC_OBJ_OSDEV_GPU:
		kind = "gpu";
		break;
	case HWLOC_OBJ_OSDEV_COPROC:
		kind = "coproc";
		break;
	default:
		break;
	}
	snprintf(d->kind, sizeof(d->kind), "%s", kind);
	for (hwloc_obj_t p = o->parent; p; p = p->parent) {
		if (p->type == HWLOC_OBJ_PCI_DEVICE) {
			snprintf(d->pci, sizeof(d->pci), "%04x:%02x:%02x.%x",
				 p->attr->pcidev.domain, p->attr->pcidev.bus,
				 p->attr->pcidev.dev, p->attr->pcidev.func);
			break;
		}
	}
	d->numa_node = obj_node(t, o);
}

static bool interesting(hwloc_obj_t o)
{
	switch (o->attr->osdev.type) {
	case HWLOC_OBJ_OSDEV_BLOCK:
		/* Memory-backed and loop devices are not where models stream from. */
		return o->name && strncmp(o->name, "zram", 4) && strncmp(o->name, "loop", 4) &&
		       strncmp(o->name, "ram", 3);
	case HWLOC_OBJ_OSDEV_GPU:
	case HWLOC_OBJ_OSDEV_COPROC:
		return true;
	default:
		return false;
	}
}

int moe_topo_devices(struct moe_topo_device *out, uint32_t max)
{
	hwloc_topology_t t;
	hwloc_obj_t o = NULL;
	int ret = need_topo(&t), n = 0;

	if (ret < 0)
		return ret;
	while ((o = hwloc_get_next_osdev(t, o))) {
		if (!interesting(o))
			continue;
		if ((uint32_t)n < max)
			fill_dev(t, o, &out[n]);
		n++;
	}
	return n;
}

/* The disk behind @dev: the parent of a partition, the first slave of dm/md. */
int moe_topo_dev_disk(dev_t dev, char *name, size_t len)
{
	char link[PATH_MAX], real[PATH_MAX], slaves[PATH_MAX + 16];
	struct dirent *e;
	struct stat st;
	char *base;
	DIR *d;

	snprintf(link, sizeof(link), "/sys/dev/block/%u:%u", major(dev), minor(dev));
	if (!realpath(link, real))
		return -ENOENT;
	snprintf(slaves, sizeof(slaves), "%s/partition", real);
	if (stat(slaves, &st) == 0) {
		base = strrchr(real, '/');
		if (!base)
			return -ENOENT;
		*base = 0;
	}
	snprintf(slaves, sizeof(slaves), "%s/slaves", real);
	d = opendir(slaves);
	if (d) {
		while ((e = readdir(d))) {
			char sub[PATH_MAX + 300];

			if (e->d_name[0] == '.')
				continue;
			snprintf(sub, sizeof(sub), "%s/%s/dev", slaves, e->d_name);
			FILE *f = fopen(sub, "r");
			unsigned ma, mi;

			if (f && fscanf(f, "%u:%u", &ma, &mi) == 2) {
				fclose(f);
				closedir(d);
				return moe_topo_dev_disk(makedev(ma, mi), name, len);
			}
			if (f)
				fclose(f);
		}
		closedir(d);
	}
	base = strrchr(real, '/');
	if (!base)
		return -ENOENT;
	snprintf(name, len, "%s", base + 1);
	return 0;
}

int moe_topo_path(const char *path, struct moe_topo_device *out)
{
	hwloc_topology_t t;
	hwloc_obj_t o = NULL;
	char disk[64];
	struct stat st;
	int ret;

	if (stat(path, &st) < 0)
		return moe_err(errno, "%s: %s", path, strerror(errno));
	ret = moe_topo_dev_disk(S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev, disk, sizeof(disk));
	if (ret < 0)
		return moe_err(ENOENT, "%s: not on a block device (tmpfs, network or overlay "
			       "filesystem)", path);
	ret = need_topo(&t);
	if (ret < 0)
		return ret;
	while ((o = hwloc_get_next_osdev(t, o))) {
		if (o->attr->osdev.type == HWLOC_OBJ_OSDEV_BLOCK && o->name &&
		    !strcmp(o->name, disk)) {
			fill_dev(t, o, out);
			return 0;
		}
	}
	memset(out, 0, sizeof(*out));
	snprintf(out->name, sizeof(out->name), "%.31s", disk);
	snprintf(out->kind, sizeof(out->kind), "%s", strncmp(disk, "nvme", 4) ? "block" : "nvme");
	out->numa_node = -1;
	return 0;
}

int moe_topo_path_node(const char *path)
{
	struct moe_topo_device d;
	int ret = moe_topo_path(path, &d);

	if (ret < 0)
		return ret;
	if (d.numa_node < 0 && hwloc_get_nbobjs_by_type(get_topo(), HWLOC_OBJ_NUMANODE) == 1)
		return (int)hwloc_get_obj_by_type(get_topo(), HWLOC_OBJ_NUMANODE, 0)->os_index;
	return d.numa_node >= 0 ? d.numa_node :
	       moe_err(ENOENT, "%s: the NUMA node of disk %s is unknown", path, d.name);
}

int moe_topo_gpu_node(void)
{
	hwloc_topology_t t = get_topo();
	hwloc_obj_t o = NULL;

	while (t && (o = hwloc_get_next_osdev(t, o))) {
		int node;

		if (o->attr->osdev.type != HWLOC_OBJ_OSDEV_GPU &&
		    o->attr->osdev.type != HWLOC_OBJ_OSDEV_COPROC)
			continue;
		node = obj_node(t, o);
		if (node >= 0)
			return node;
	}
	return -ENOENT;
}

static hwloc_obj_t node_obj(hwloc_topology_t t, int node)
{
	hwloc_obj_t o = NULL;

	while ((o = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, o)))
		if ((int)o->os_index == node)
			return o;
	return NULL;
}

int moe_topo_check_node(int node)
{
	hwloc_topology_t t = get_topo();
	char list[128] = "";
	hwloc_obj_t o = NULL;
	size_t n = 0;

	if (!t || node_obj(t, node))
		return 0;
	while ((o = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, o)) && n + 12 < sizeof(list))
		n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%u", n ? ", " : "",
				      o->os_index);
	return moe_err(EINVAL, "NUMA node %d does not exist (nodes: %s); use -1 for the node "
		       "nearest the file", node, list);
}

void moe_topo_bind_thread(int node)
{
	hwloc_topology_t t;
	hwloc_obj_t o;

	if (node < 0 || !(t = get_topo()) || !(o = node_obj(t, node)))
		return;
	if (hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE) < 2)
		return;
	if (hwloc_set_cpubind(t, o->cpuset, HWLOC_CPUBIND_THREAD) < 0)
		moe_log(MOE_LOG_DEBUG, "cannot bind an I/O thread to node %d: %s", node,
			strerror(errno));
}

void moe_topo_bind_memory(void *p, uint64_t len, int node)
{
	hwloc_topology_t t;
	hwloc_obj_t o;

	if (node < 0 || !(t = get_topo()) || !(o = node_obj(t, node)))
		return;
	/* One node: nothing to choose, and some kernels refuse mbind there. */
	if (hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE) < 2)
		return;
	if (hwloc_set_area_membind(t, p, len, o->nodeset, HWLOC_MEMBIND_BIND,
				   HWLOC_MEMBIND_BYNODESET) < 0)
		moe_log(MOE_LOG_DEBUG, "cannot bind staging memory to node %d: %s", node,
			strerror(errno));
}
