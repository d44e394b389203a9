/*
 * Layout printer for test/unit/uapi/headers.test.ts. Built at test time against the machine's kernel uapi headers
 * (linux-libc-dev). The test generates "items.h" from the TypeScript layout tables and constants: one macro call
 * per struct size, struct field, constant or string, each under the preprocessor guard that says whether the
 * installed header has it. This file only provides the includes and the printing macros.
 *
 * Output, one item per line:
 *   struct <name> size <sizeof>
 *   field <struct>.<key> <offsetof> <sizeof member>
 *   oldfield <struct>.<member> <offsetof> <sizeof member>   (pre-API-1 / pre-zoned members)
 *   const <NAME> <decimal value>
 *   str <NAME> <string>
 */
#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>
#include <linux/version.h>
#include <linux/ioctl.h>
#include <linux/netlink.h>
#include <linux/genetlink.h>
#include <linux/vdpa.h>
#include <linux/vduse.h>
#include <linux/vhost.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_net.h>

#define STRUCT(S) printf("struct %s size %zu\n", #S, sizeof(struct S))
#define FIELD(S, key, member)                                                                                  \
	printf("field %s.%s %zu %zu\n", #S, key, offsetof(struct S, member), sizeof(((struct S *)0)->member))
#define OLDFIELD(S, member)                                                                                    \
	printf("oldfield %s.%s %zu %zu\n", #S, #member, offsetof(struct S, member),                             \
	       sizeof(((struct S *)0)->member))
#define CONST(name, expr) printf("const %s %lld\n", name, (long long)(expr))
#define STR(name, expr) printf("str %s %s\n", name, expr)

int main(void)
{
#include "items.h"
	return 0;
}
