#!/bin/sh
# Bring up open-iscsi in the micro-VM guest (no systemd, no udev): uploaded by
# openiscsi.py as /ic/open-iscsi-setup and run once after boot.
#
#   open-iscsi-setup INITIATOR_NAME
#
# Expects /etc/iscsi/iscsid.conf already written by the driver. devtmpfs creates the
# /dev/sdX nodes when the kernel scans a session's LUNs, so udev is not needed.
set -eu
name=$1
printf 'InitiatorName=%s\n' "$name" > /etc/iscsi/initiatorname.iscsi
mkdir -p /run/lock/iscsi /etc/iscsi/nodes /etc/iscsi/send_targets /etc/iscsi/ifaces
# The transport is loaded at boot (iscsi_tcp); say so when it is not.
[ -d /sys/class/iscsi_transport/tcp ] || { echo "iscsi_tcp is not loaded" >&2; exit 1; }
if ! pidof iscsid >/dev/null 2>&1; then
    iscsid
fi
i=0
# iscsiadm exits 21 (no sessions) once iscsid answers on its socket
until iscsiadm -m session >/dev/null 2>&1 || [ $? -eq 21 ]; do
    i=$((i + 1))
    [ $i -gt 100 ] && { echo "iscsid did not answer" >&2; exit 1; }
    sleep 0.1
done
echo "open-iscsi: $(iscsiadm --version)"
echo "kernel: $(uname -r)"
echo "initiator: $name"
