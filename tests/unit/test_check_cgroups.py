"""The cgroup check of ``farmhand check``, on /proc texts seen on real hosts."""

from farmhand.check import missing_cgroup_controllers

PROC_CGROUPS = """#subsys_name	hierarchy	num_cgroups	enabled
cpuset	3	2	1
cpu	1	2	1
memory	4	194	1
net_cls	14	2	1
net_prio	14	2	1
hugetlb	16	2	1
rdma	0	1	0
"""

MOUNTED_SOME = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs ro,size=4096k,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime shared:9 - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
"""

MOUNTED_ALL = MOUNTED_SOME + """43 31 0:39 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio
45 31 0:41 / /sys/fs/cgroup/hugetlb rw,relatime - cgroup cgroup rw,hugetlb
"""

CGROUP_V2_ONLY = """#subsys_name	hierarchy	num_cgroups	enabled
cpuset	0	120	1
memory	0	120	1
"""


def test_controllers_the_boot_left_unmounted_are_named():
    assert missing_cgroup_controllers(PROC_CGROUPS, MOUNTED_SOME) == ["net_cls", "net_prio", "hugetlb"]


def test_nothing_is_missing_once_every_hierarchy_is_mounted():
    assert missing_cgroup_controllers(PROC_CGROUPS, MOUNTED_ALL) == []


def test_a_cgroup_v2_host_has_nothing_to_mount():
    v2 = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    assert missing_cgroup_controllers(CGROUP_V2_ONLY, v2) == []
