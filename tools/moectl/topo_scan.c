/* SPDX-License-Identifier: MIT */
/*
 * What `moectl topo` shows, gathered from sysfs (NUMA nodes and distances,
 * PCI display and accelerator devices with their links, NVMe controllers and
 * their block devices, the disk under a file), libdrm (DRM nodes and their
 * drivers) and the CUDA driver through libmoe (names and memory).  The sysfs
 * root is $MOE_SYSFS_ROOT when set, so that tests describe a machine of
 * their own; libdrm, which reads the real /sys and /dev, is then left out.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <xf86drm.h>

#include "moe/moe.h"
#include "topo.h"

/* @s into @d of @len bytes, cut short where it does not fit */
static void scpy(char *d, size_t len, const char *s)
{
	size_t n = strnlen(s, len - 1);

	memcpy(d, s, n);
	d[n] = 0;
}

/* @rel under the sysfs root into @buf (PATH_MAX). */
static const char *sys_path(const struct topo *t, char *buf, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static const char *sys_path(const struct topo *t, char *buf, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(buf, PATH_MAX, "%s/", t->root);

	va_start(ap, fmt);
	vsnprintf(buf + n, PATH_MAX - (size_t)n, fmt, ap);
	va_end(ap);
	return buf;
}

/* The first line of a small attribute file, without its newline; "" when absent. */
static int read_attr(const char *path, char *buf, size_t len)
{
	ssize_t n;
	int fd;

	buf[0] = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

static int attr_in(const char *dir, const char *name, char *buf, size_t len)
{
	char p[PATH_MAX];

	if (snprintf(p, sizeof(p), "%s/%s", dir, name) >= (int)sizeof(p)) {
		buf[0] = 0;
		return -ENAMETOOLONG;
	}
	return read_attr(p, buf, len);
}

static long attr_long(const char *dir, const char *name, long def)
{
	char buf[64], *end;
	long v;

	if (attr_in(dir, name, buf, sizeof(buf)) < 0 || !buf[0])
		return def;
	v = strtol(buf, &end, 0);
	return end == buf ? def : v;
}

/* The last component of the link @dir/@name points to ("nvme" for a driver link). */
static void link_base(const char *dir, const char *name, char *buf, size_t len)
{
	char p[PATH_MAX], target[PATH_MAX];
	ssize_t n;
	const char *b;

	buf[0] = 0;
	if (snprintf(p, sizeof(p), "%s/%s", dir, name) >= (int)sizeof(p))
		return;
	n = readlink(p, target, sizeof(target) - 1);
	if (n <= 0)
		return;
	target[n] = 0;
	b = strrchr(target, '/');
	scpy(buf, len, b ? b + 1 : target);
}

static bool is_pci_addr(const char *s)
{
	unsigned a, b, c, d;
	char end;

	return sscanf(s, "%4x:%2x:%2x.%1x%c", &a, &b, &c, &d, &end) == 4 && strlen(s) == 12;
}

/* ------------------------------------------------------------ NUMA */

static void scan_nodes(struct topo *t)
{
	char dir[PATH_MAX], sub[PATH_MAX + 300], buf[1024];
	struct dirent *e;
	DIR *d = opendir(sys_path(t, dir, "devices/system/node"));

	if (!d)
		return;
	while ((e = readdir(d)) && t->n_nodes < TOPO_MAX_NODES) {
		struct topo_node *n = &t->nodes[t->n_nodes];
		char *p, *tok, *save = NULL;
		int id;
		char end;

		if (sscanf(e->d_name, "node%d%c", &id, &end) != 1 || id < 0)
			continue;
		memset(n, 0, sizeof(*n));
		n->id = id;
		snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
		attr_in(sub, "cpulist", n->cpus, sizeof(n->cpus));
		/* "Node 0 MemTotal:       65536000 kB" */
		if (attr_in(sub, "meminfo", buf, sizeof(buf)) == 0 &&
		    (p = strstr(buf, "MemTotal:")))
			n->mem_bytes = strtoull(p + 9, NULL, 10) * 1024;
		if (attr_in(sub, "distance", buf, sizeof(buf)) == 0)
			for (tok = strtok_r(buf, " ", &save); tok && n->n_dist < TOPO_MAX_NODES;
			     tok = strtok_r(NULL, " ", &save))
				n->dist[n->n_dist++] = atoi(tok);
		t->n_nodes++;
	}
	closedir(d);
	/* readdir order is the directory's: sort by id (few nodes: insertion) */
	for (int i = 1; i < t->n_nodes; i++)
		for (int j = i; j > 0 && t->nodes[j].id < t->nodes[j - 1].id; j--) {
			struct topo_node tmp = t->nodes[j];

			t->nodes[j] = t->nodes[j - 1];
			t->nodes[j - 1] = tmp;
		}
}

/* ------------------------------------------------------------ PCI */

static int cmp_name(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void read_link(const char *dev, struct topo_link *l)
{
	attr_in(dev, "current_link_speed", l->speed, sizeof(l->speed));
	attr_in(dev, "max_link_speed", l->max_speed, sizeof(l->max_speed));
	l->width = (int)attr_long(dev, "current_link_width", 0);
	l->max_width = (int)attr_long(dev, "max_link_width", 0);
}

/* Fill @p from the PCI device directory @dev (a path under the sysfs root). */
static void read_pci(const char *dev, const char *addr, struct topo_pci *p)
{
	char sub[PATH_MAX + 16], names[8][32];
	struct dirent *e;
	int n = 0;
	DIR *d;

	memset(p, 0, sizeof(*p));
	snprintf(p->addr, sizeof(p->addr), "%s", addr);
	p->cls = (unsigned)attr_long(dev, "class", 0);
	p->vendor = (unsigned)attr_long(dev, "vendor", 0);
	p->device = (unsigned)attr_long(dev, "device", 0);
	p->node = (int)attr_long(dev, "numa_node", -1);
	if (p->node < -1)
		p->node = -1;
	link_base(dev, "driver", p->driver, sizeof(p->driver));
	read_link(dev, &p->link);
	/* DRM nodes the kernel made for it: drm/card0, drm/renderD128, accel/accel0 */
	for (int k = 0; k < 2; k++) {
		snprintf(sub, sizeof(sub), "%s/%s", dev, k ? "accel" : "drm");
		d = opendir(sub);
		while (d && (e = readdir(d)) && n < 8) {
			if (strncmp(e->d_name, "card", 4) && strncmp(e->d_name, "renderD", 7) &&
			    strncmp(e->d_name, "accel", 5))
				continue;
			scpy(names[n++], sizeof(names[0]), e->d_name);
		}
		if (d)
			closedir(d);
	}
	qsort(names, (size_t)n, sizeof(names[0]), cmp_name);
	for (int i = 0; i < n; i++) {
		size_t len = strlen(p->drm);

		if (len + strlen(names[i]) + 2 < sizeof(p->drm))
			snprintf(p->drm + len, sizeof(p->drm) - len, "%s%s", len ? " " : "",
				 names[i]);
	}
}

static void scan_gpus(struct topo *t)
{
	char dir[PATH_MAX], dev[PATH_MAX + 300];
	struct dirent *e;
	DIR *d = opendir(sys_path(t, dir, "bus/pci/devices"));

	if (!d)
		return;
	while ((e = readdir(d)) && t->n_gpus < TOPO_MAX_GPUS) {
		struct topo_gpu *g = &t->gpus[t->n_gpus];
		unsigned base;

		if (!is_pci_addr(e->d_name))
			continue;
		snprintf(dev, sizeof(dev), "%s/%s", dir, e->d_name);
		base = (unsigned)attr_long(dev, "class", 0) >> 16;
		/* 0x03: display controllers (VGA, 3D); 0x12: processing accelerators */
		if (base != 0x03 && base != 0x12)
			continue;
		memset(g, 0, sizeof(*g));
		read_pci(dev, e->d_name, &g->pci);
		g->cuda = -1;
		t->n_gpus++;
	}
	closedir(d);
	for (int i = 1; i < t->n_gpus; i++)
		for (int j = i; j > 0 && strcmp(t->gpus[j].pci.addr, t->gpus[j - 1].pci.addr) < 0;
		     j--) {
			struct topo_gpu tmp = t->gpus[j];

			t->gpus[j] = t->gpus[j - 1];
			t->gpus[j - 1] = tmp;
		}
}

/* ------------------------------------------------------------ NVMe, disks */

/* The nearest directory from @dir up (within the root) with a numa_node file: its value. */
static int node_up(const struct topo *t, const char *dir)
{
	char p[PATH_MAX], *slash;
	size_t root_len = strlen(t->root_real);

	if (!realpath(dir, p))
		return -1;
	while (strlen(p) > root_len) {
		char f[PATH_MAX + 16];

		snprintf(f, sizeof(f), "%s/numa_node", p);
		if (access(f, R_OK) == 0) {
			long v = attr_long(p, "numa_node", -1);

			return v >= 0 && v < 4096 ? (int)v : -1;
		}
		slash = strrchr(p, '/');
		if (!slash)
			break;
		*slash = 0;
	}
	return -1;
}

static void scan_nvme(struct topo *t)
{
	char dir[PATH_MAX], ctl[PATH_MAX + 300], dev[PATH_MAX + 310];
	char real[PATH_MAX], pci[32];
	struct dirent *e, *ns;
	DIR *d = opendir(sys_path(t, dir, "class/nvme"));

	if (!d)
		return;
	while ((e = readdir(d)) && t->n_nvme < TOPO_MAX_NVME) {
		struct topo_nvme *n = &t->nvme[t->n_nvme];
		DIR *nd;
		int id;
		char end;

		if (sscanf(e->d_name, "nvme%d%c", &id, &end) != 1)
			continue;
		memset(n, 0, sizeof(*n));
		scpy(n->name, sizeof(n->name), e->d_name);
		snprintf(ctl, sizeof(ctl), "%s/%s", dir, e->d_name);
		attr_in(ctl, "model", n->model, sizeof(n->model));
		/* sysfs pads model names with spaces */
		for (size_t k = strlen(n->model); k && n->model[k - 1] == ' '; k--)
			n->model[k - 1] = 0;
		attr_in(ctl, "transport", n->transport, sizeof(n->transport));
		n->pci.node = -1;
		snprintf(dev, sizeof(dev), "%s/device", ctl);
		if (realpath(dev, real)) {
			const char *b = strrchr(real, '/');

			scpy(pci, sizeof(pci), b ? b + 1 : real);
			if (is_pci_addr(pci)) {
				read_pci(real, pci, &n->pci);
				n->has_pci = true;
			}
		}
		if (n->pci.node < 0)
			n->pci.node = node_up(t, ctl);
		/* namespaces: nvme0n1, or nvme0c0n1 under native multipath (block nvme0n1) */
		nd = opendir(ctl);
		while (nd && (ns = readdir(nd))) {
			int a, b, c;
			char blk[48];
			size_t len = strlen(n->blocks);

			if (sscanf(ns->d_name, "nvme%dc%dn%d%c", &a, &b, &c, &end) == 3)
				snprintf(blk, sizeof(blk), "nvme%dn%d", a, c);
			else if (sscanf(ns->d_name, "nvme%dn%d%c", &a, &c, &end) == 2)
				scpy(blk, sizeof(blk), ns->d_name);
			else
				continue;
			if (len + strlen(blk) + 2 < sizeof(n->blocks))
				snprintf(n->blocks + len, sizeof(n->blocks) - len, "%s%s",
					 len ? " " : "", blk);
		}
		if (nd)
			closedir(nd);
		t->n_nvme++;
	}
	closedir(d);
	for (int i = 1; i < t->n_nvme; i++)
		for (int j = i; j > 0 && strcmp(t->nvme[j].name, t->nvme[j - 1].name) < 0; j--) {
			struct topo_nvme tmp = t->nvme[j];

			t->nvme[j] = t->nvme[j - 1];
			t->nvme[j - 1] = tmp;
		}
}

/* The NVMe controller whose namespaces include block device @disk, or NULL. */
const struct topo_nvme *topo_nvme_of(const struct topo *t, const char *disk)
{
	for (int i = 0; i < t->n_nvme; i++) {
		const char *b = t->nvme[i].blocks;
		size_t len = strlen(disk);

		for (const char *p = b; (p = strstr(p, disk)); p += len)
			if ((p == b || p[-1] == ' ') && (p[len] == 0 || p[len] == ' '))
				return &t->nvme[i];
	}
	return NULL;
}

static void scan_disks(struct topo *t)
{
	char dir[PATH_MAX], dev[PATH_MAX + 300];
	struct dirent *e;
	DIR *d = opendir(sys_path(t, dir, "block"));

	if (!d)
		return;
	while ((e = readdir(d)) && t->n_disks < TOPO_MAX_DISKS) {
		struct topo_disk *k = &t->disks[t->n_disks];

		if (e->d_name[0] == '.' || !strncmp(e->d_name, "loop", 4) ||
		    !strncmp(e->d_name, "ram", 3) || !strncmp(e->d_name, "zram", 4) ||
		    !strncmp(e->d_name, "dm-", 3) || !strncmp(e->d_name, "md", 2) ||
		    topo_nvme_of(t, e->d_name))
			continue;
		memset(k, 0, sizeof(*k));
		scpy(k->name, sizeof(k->name), e->d_name);
		snprintf(dev, sizeof(dev), "%s/%s/device", dir, e->d_name);
		link_base(dev, "driver", k->driver, sizeof(k->driver));
		k->node = node_up(t, dev);
		if (k->node < 0 && t->n_nodes == 1)
			k->node = t->nodes[0].id;
		t->n_disks++;
	}
	closedir(d);
	for (int i = 1; i < t->n_disks; i++)
		for (int j = i; j > 0 && strcmp(t->disks[j].name, t->disks[j - 1].name) < 0; j--) {
			struct topo_disk tmp = t->disks[j];

			t->disks[j] = t->disks[j - 1];
			t->disks[j - 1] = tmp;
		}
}

/*
 * The disk under block device @dev: a partition's parent, the first member
 * of a device-mapper or md device (@depth bounds a loop of links).
 */
static int dev_disk(const struct topo *t, dev_t dev, char *name, size_t len, int depth)
{
	char link[PATH_MAX], real[PATH_MAX], sub[PATH_MAX + 300], buf[32];
	struct dirent *e;
	char *base;
	DIR *d;

	if (depth > 8)
		return -ELOOP;
	sys_path(t, link, "dev/block/%u:%u", major(dev), minor(dev));
	if (!realpath(link, real))
		return -ENOENT;
	snprintf(sub, sizeof(sub), "%s/partition", real);
	if (access(sub, F_OK) == 0) {
		base = strrchr(real, '/');
		if (!base || base == real)
			return -ENOENT;
		*base = 0;
	}
	snprintf(sub, sizeof(sub), "%s/slaves", real);
	d = opendir(sub);
	while (d && (e = readdir(d))) {
		char slave[PATH_MAX + 600];
		unsigned ma, mi;

		if (e->d_name[0] == '.')
			continue;
		snprintf(slave, sizeof(slave), "%s/%s", sub, e->d_name);
		if (attr_in(slave, "dev", buf, sizeof(buf)) == 0 &&
		    sscanf(buf, "%u:%u", &ma, &mi) == 2) {
			closedir(d);
			return dev_disk(t, makedev(ma, mi), name, len, depth + 1);
		}
	}
	if (d)
		closedir(d);
	base = strrchr(real, '/');
	if (!base)
		return -ENOENT;
	snprintf(name, len, "%s", base + 1);
	return 0;
}

int topo_file(const struct topo *t, const char *path, struct topo_file *out)
{
	char dir[PATH_MAX];
	struct stat st;
	const struct topo_nvme *n;

	memset(out, 0, sizeof(*out));
	out->node = -1;
	if (stat(path, &st) < 0)
		return fail("topo: %s: %s", path, strerror(errno));
	if (dev_disk(t, S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev, out->disk,
		     sizeof(out->disk), 0) < 0) {
		snprintf(out->disk, sizeof(out->disk), "-");
		out->on_disk = false;
		return 0;
	}
	out->on_disk = true;
	n = topo_nvme_of(t, out->disk);
	if (n) {
		snprintf(out->nvme, sizeof(out->nvme), "%s", n->name);
		out->node = n->pci.node;
	} else {
		sys_path(t, dir, "block/%s/device", out->disk);
		out->node = node_up(t, dir);
	}
	/* with one node, everything is on it */
	if (out->node < 0 && t->n_nodes == 1)
		out->node = t->nodes[0].id;
	return 0;
}

/* ------------------------------------------------------------ libdrm, CUDA */

static void drm_driver(const char *node, char *buf, size_t len)
{
	drmVersionPtr v;
	int fd = open(node, O_RDWR | O_CLOEXEC | O_NONBLOCK);

	buf[0] = 0;
	if (fd < 0)
		return;
	v = drmGetVersion(fd);
	if (v) {
		snprintf(buf, len, "%s", v->name ? v->name : "");
		drmFreeVersion(v);
	}
	close(fd);
}

static void scan_drm(struct topo *t)
{
	drmDevicePtr devs[TOPO_MAX_DRM];
	int n = drmGetDevices2(0, devs, TOPO_MAX_DRM);

	if (n <= 0)
		return;
	for (int i = 0; i < n && i < TOPO_MAX_DRM; i++) {
		drmDevicePtr dv = devs[i];
		char addr[16] = "", nodes[64] = "", drv[32] = "";
		const char *open_node = NULL;
		struct topo_gpu *g = NULL;

		for (int k = 0; k < DRM_NODE_MAX; k++) {
			const char *b;
			size_t len = strlen(nodes);

			if (!(dv->available_nodes & (1 << k)))
				continue;
			b = strrchr(dv->nodes[k], '/');
			b = b ? b + 1 : dv->nodes[k];
			if (len + strlen(b) + 2 < sizeof(nodes))
				snprintf(nodes + len, sizeof(nodes) - len, "%s%s", len ? " " : "", b);
			/* the render node is open to more users than the primary one */
			if (k == DRM_NODE_RENDER || !open_node)
				open_node = dv->nodes[k];
		}
		if (open_node)
			drm_driver(open_node, drv, sizeof(drv));
		if (dv->bustype == DRM_BUS_PCI && dv->businfo.pci) {
			snprintf(addr, sizeof(addr), "%04x:%02x:%02x.%u", dv->businfo.pci->domain,
				 dv->businfo.pci->bus, dv->businfo.pci->dev, dv->businfo.pci->func);
			for (int j = 0; j < t->n_gpus; j++)
				if (!strcmp(t->gpus[j].pci.addr, addr))
					g = &t->gpus[j];
		}
		if (g) {
			snprintf(g->pci.drm, sizeof(g->pci.drm), "%s", nodes);
			snprintf(g->drm_driver, sizeof(g->drm_driver), "%s", drv);
		} else if (t->n_drm < TOPO_MAX_DRM) {
			struct topo_drm *o = &t->drm[t->n_drm++];

			snprintf(o->nodes, sizeof(o->nodes), "%s", nodes);
			snprintf(o->driver, sizeof(o->driver), "%s", drv);
			snprintf(o->pci, sizeof(o->pci), "%s", addr);
		}
	}
	drmFreeDevices(devs, n < TOPO_MAX_DRM ? n : TOPO_MAX_DRM);
}

static void scan_cuda(struct topo *t)
{
	int n = moe_cuda_devices(t->cuda, TOPO_MAX_GPUS);

	t->cuda_ret = n < 0 ? n : 0;
	t->n_cuda = n < 0 ? 0 : n < TOPO_MAX_GPUS ? n : TOPO_MAX_GPUS;
	if (n < 0)
		snprintf(t->cuda_err, sizeof(t->cuda_err), "%s", moe_errmsg());
	for (int i = 0; i < t->n_cuda; i++)
		for (int j = 0; j < t->n_gpus; j++)
			if (!strcmp(t->gpus[j].pci.addr, t->cuda[i].pci))
				t->gpus[j].cuda = i;
}

int topo_scan(struct topo *t)
{
	const char *root = getenv("MOE_SYSFS_ROOT");

	memset(t, 0, sizeof(*t));
	t->fake = root && *root;
	snprintf(t->root, sizeof(t->root), "%s", t->fake ? root : "/sys");
	if (!realpath(t->root, t->root_real))
		return fail("topo: sysfs root %s: %s%s", t->root, strerror(errno),
			    t->fake ? " (MOE_SYSFS_ROOT names a directory laid out as /sys)" : "");
	scan_nodes(t);
	scan_gpus(t);
	scan_nvme(t);
	scan_disks(t);
	if (!t->fake)
		scan_drm(t);
	scan_cuda(t);
	return 0;
}

/* ------------------------------------------------------------ derived */

/* "16.0 GT/s PCIe" x @width: the PCIe generation and usable GB/s each way. */
int topo_link_gen(const char *speed, double *gbps, int width)
{
	double gts = strtod(speed, NULL);
	int gen = gts >= 60 ? 6 : gts >= 30 ? 5 : gts >= 15 ? 4 : gts >= 7.5 ? 3 :
		  gts >= 4.5 ? 2 : gts >= 2 ? 1 : 0;

	/* 8b/10b coding up to gen 2, 128b/130b from gen 3 (gen 6's FLIT mode about the same) */
	*gbps = gen == 0 ? 0 : gts * width / 8 * (gen <= 2 ? 0.8 : 128.0 / 130);
	return gen;
}

const char *topo_vendor(unsigned id)
{
	static const struct { unsigned id; const char *name; } v[] = {
		{ 0x10de, "NVIDIA" }, { 0x1002, "AMD" }, { 0x8086, "Intel" },
		{ 0x1af4, "virtio" }, { 0x1234, "QEMU" }, { 0x15ad, "VMware" },
		{ 0x1414, "Microsoft" }, { 0x1a03, "ASPEED" }, { 0x102b, "Matrox" },
		{ 0x1013, "Cirrus" }, { 0x1d0f, "Amazon" }, { 0x1ae0, "Google" },
		{ 0x144d, "Samsung" }, { 0x1e0f, "KIOXIA" }, { 0x15b7, "Sandisk" },
		{ 0x1c5c, "SK hynix" }, { 0x1bb1, "Seagate" }, { 0x1987, "Phison" },
		{ 0x1cc1, "ADATA" }, { 0x126f, "Silicon Motion" }, { 0x1d97, "Shenzhen Longsys" },
		{ 0x1e4b, "MAXIO" }, { 0x1344, "Micron" }, { 0x1eb4, "Tenstorrent" },
		{ 0x1da3, "Habana" }, { 0x1ded, "Alibaba" },
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		if (v[i].id == id)
			return v[i].name;
	return NULL;
}
