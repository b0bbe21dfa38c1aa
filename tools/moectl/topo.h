/* SPDX-License-Identifier: MIT */
/* moectl topo: the machine as topo_scan.c finds it, for topo.c to print. */
#ifndef MOECTL_TOPO_H
#define MOECTL_TOPO_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "moe/moe.h"
#include "moectl.h"

#define TOPO_MAX_NODES 64
#define TOPO_MAX_GPUS 32
#define TOPO_MAX_NVME 64
#define TOPO_MAX_DISKS 64
#define TOPO_MAX_DRM 32

struct topo_link {
	char speed[32], max_speed[32];   /* "16.0 GT/s PCIe"; "" when sysfs has none */
	int width, max_width;
};

struct topo_pci {
	char addr[16];               /* "0000:3b:00.0" */
	unsigned cls, vendor, device;
	char driver[32];             /* the kernel driver bound, "" for none */
	char drm[64];                /* DRM nodes: "card0 renderD128" */
	int node;                    /* NUMA node, -1 unknown */
	struct topo_link link;
};

struct topo_node {
	int id;
	char cpus[256];
	uint64_t mem_bytes;
	int dist[TOPO_MAX_NODES];    /* to the nodes in the order of their ids */
	int n_dist;
};

struct topo_gpu {
	struct topo_pci pci;
	int cuda;                    /* index into topo.cuda, -1 none */
	char drm_driver[32];         /* what the DRM node says it is (libdrm) */
};

struct topo_nvme {
	char name[32];               /* nvme0 */
	char model[64];
	char transport[16];          /* pcie, tcp, rdma, fc, loop */
	bool has_pci;
	struct topo_pci pci;         /* node is set even without PCI when sysfs knows it */
	char blocks[256];            /* "nvme0n1 nvme0n2" */
};

struct topo_disk {
	char name[32];
	char driver[32];
	int node;
};

/* DRM devices that are not one of the GPUs (moe.ko's own node, virtual devices) */
struct topo_drm {
	char nodes[64], driver[32], pci[16];
};

struct topo {
	char root[PATH_MAX], root_real[PATH_MAX];
	bool fake;                   /* MOE_SYSFS_ROOT: libdrm not asked */
	struct topo_node nodes[TOPO_MAX_NODES];
	int n_nodes;
	struct topo_gpu gpus[TOPO_MAX_GPUS];
	int n_gpus;
	struct topo_nvme nvme[TOPO_MAX_NVME];
	int n_nvme;
	struct topo_disk disks[TOPO_MAX_DISKS];
	int n_disks;
	struct topo_drm drm[TOPO_MAX_DRM];
	int n_drm;
	struct moe_cuda_device cuda[TOPO_MAX_GPUS];
	int n_cuda, cuda_ret;
	char cuda_err[256];
};

/* Where a file lives. */
struct topo_file {
	bool on_disk;                /* false: tmpfs, overlay, network */
	char disk[32];               /* "nvme0n1", "-" */
	char nvme[32];               /* its controller, "" when not NVMe */
	int node;
};

/* Fill @t (1 after a message when the sysfs root is missing). */
int topo_scan(struct topo *t);
int topo_file(const struct topo *t, const char *path, struct topo_file *out);
const struct topo_nvme *topo_nvme_of(const struct topo *t, const char *disk);
/* PCIe generation of a link speed and the link's GB/s each way at @width lanes (0: unknown). */
int topo_link_gen(const char *speed, double *gbps, int width);
/* A PCI vendor's short name, or NULL. */
const char *topo_vendor(unsigned id);

#endif
