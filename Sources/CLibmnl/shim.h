// libmnl: netlink messages libnl has no object for (cls_bpf filters, the proc connector).
#ifndef NETSHAPE_CLIBMNL_H
#define NETSHAPE_CLIBMNL_H
#include <libmnl/libmnl.h>
#endif
