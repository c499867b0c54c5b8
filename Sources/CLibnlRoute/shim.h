// libnl-route-3: the rtnetlink objects netshape programs (qdiscs, HTB classes, cls_cgroup, links).
#ifndef NETSHAPE_CLIBNLROUTE_H
#define NETSHAPE_CLIBNLROUTE_H
#include <netlink/netlink.h>
#include <netlink/errno.h>
#include <netlink/cache.h>
#include <netlink/route/link.h>
#include <netlink/route/tc.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/class.h>
#include <netlink/route/classifier.h>
#include <netlink/route/qdisc/htb.h>
#include <netlink/route/qdisc/fifo.h>
#include <netlink/route/qdisc/fq_codel.h>
#include <netlink/route/qdisc/sfq.h>
#include <netlink/route/cls/cgroup.h>
#include <netlink/route/route.h>
#include <netlink/route/addr.h>
#include <netlink/route/action.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/cls/u32.h>
#include <netlink/route/act/mirred.h>
#endif
