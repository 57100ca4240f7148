#!/usr/bin/env bash
# A throwaway copy of this machine's root for installing the .deb (tests/packaging/test_deb.py).
# The root is an overlay: the running system below, writes in a tmpfs, all in a private mount
# namespace, so nothing the package does (user, files, units) reaches the real system and all
# of it is gone when the namespace ends. Needs root, unshare and overlayfs.
#
#   throwaway_root.sh chroot DEB SCRIPT   install nothing; run SCRIPT with sh in the root
#                                         (DEB is at /streetgate.deb there)
#   throwaway_root.sh boot DEB            boot systemd as PID 1 of new pid, mount, cgroup, uts,
#                                         ipc and network namespaces in the root; it runs until
#                                         killed (the caller enters it with nsenter)
set -euo pipefail

mode=$1
deb=$(realpath "$2")
here=$(realpath "${BASH_SOURCE[0]}")

setup_root() {
  # Called inside the new mount namespace: a tmpfs on /mnt (seen only there) keeps the overlay's
  # upper layer off the filesystem it covers.
  local top=/mnt
  mount -t tmpfs -o mode=0755 streetgate-test "$top"
  mkdir "$top/upper" "$top/work" "$top/root"
  cp "$deb" "$top/upper/streetgate.deb"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$top/upper,workdir=$top/work" "$top/root"
  mount -t proc proc "$top/root/proc"
  mount --bind /dev "$top/root/dev"
  mount -t tmpfs tmpfs "$top/root/run"
  mount -t tmpfs tmpfs "$top/root/tmp"
}

case "$mode" in
  chroot)
    script=$3
    exec unshare --mount --pid --fork --propagation private "$here" inner-chroot "$deb" "$script"
    ;;
  inner-chroot)
    setup_root
    exec chroot /mnt/root /bin/sh -c "$3"
    ;;
  boot)
    # systemd wants cgroups of its own: a subtree per hierarchy that becomes the root of a new
    # cgroup namespace, removed again when it has stopped.
    sub=streetgate-deb-test-$$
    groups=()
    cleanup() {
      for mnt in "${groups[@]}"; do
        echo $$ > "$mnt/cgroup.procs" 2>/dev/null || true
        find "$mnt/$sub" -depth -type d -exec rmdir {} + 2>/dev/null || true
      done
    }
    trap cleanup EXIT
    while read -r _ mnt fstype _; do
      case "$fstype" in cgroup|cgroup2) ;; *) continue ;; esac
      mkdir -p "$mnt/$sub"
      groups+=("$mnt")
      # A new cpuset group has no CPUs or memory nodes until given its parent's.
      if [ -e "$mnt/cpuset.cpus" ]; then
        cat "$mnt/cpuset.cpus" > "$mnt/$sub/cpuset.cpus"
        cat "$mnt/cpuset.mems" > "$mnt/$sub/cpuset.mems"
      fi
      echo $$ > "$mnt/$sub/cgroup.procs"
    done < /proc/self/mounts
    rc=0
    unshare --cgroup --mount --pid --fork --uts --ipc --net --propagation private \
      "$here" inner-boot "$deb" || rc=$?
    exit "$rc"
    ;;
  inner-boot)
    setup_root
    root=/mnt/root
    # /sys read-only (no udev events for the real machine), the cgroup hierarchies mounted anew
    # so that they start at this namespace's root.
    mount --bind /sys "$root/sys"
    mount -o remount,bind,ro "$root/sys"
    mount -t tmpfs -o mode=0755 cgroup "$root/sys/fs/cgroup"
    while read -r _ mnt fstype opts _; do
      case "$fstype" in cgroup|cgroup2) ;; *) continue ;; esac
      case "$mnt" in /sys/fs/cgroup/*) ;; *) continue ;; esac
      target=$root$mnt
      mkdir -p "$target"
      if [ "$fstype" = cgroup2 ]; then
        mount -t cgroup2 cgroup2 "$target"
      else
        # Keep the controllers (or name=) of the host's mount, drop its generic flags.
        keep=$(echo "$opts" | tr , '\n' | grep -v -x -E 'rw|ro|nosuid|nodev|noexec|relatime|noatime' \
               | paste -sd, -)
        mount -t cgroup -o "$keep" cgroup "$target"
      fi
    done < /proc/self/mounts
    exec chroot "$root" /usr/bin/env container=streetgate-test \
      /lib/systemd/systemd --system --unit=basic.target --log-target=console --show-status=no
    ;;
  *)
    echo "usage: throwaway_root.sh chroot|boot DEB [SCRIPT]" >&2
    exit 2
    ;;
esac
