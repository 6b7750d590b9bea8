#!/bin/sh
# LIO configuration through configfs, one small verb per call, so that every step shows
# up as its own line in the driver's command log (lio.py uploads this as /ic/lio).
#
# Why configfs and not targetcli: the LIO guest is a busybox initramfs (boots in about
# 5 s under TCG); targetcli/rtslib-fb would need Python and a Debian rootfs. rtslib-fb
# writes exactly these files, in this order.
#
#   lio setup                              mount configfs, set dbroot, print versions
#   lio backstore fileio|ramdisk NAME SIZE_BYTES BLOCK_SIZE
#   lio target IQN                         iSCSI target + TPG 1
#   lio portal IQN ADDR PORT               network portal (ADDR may be [::])
#   lio lun IQN LUN BACKSTORE_TYPE NAME    export a backstore as LUN
#   lio attrib IQN KEY VALUE               tpgt_1/attrib/KEY
#   lio param IQN KEY VALUE                tpgt_1/param/KEY (login keys, RFC 7143 13)
#   lio acl IQN INITIATOR LUN...           node ACL with mapped LUNs
#   lio auth IQN INITIATOR|- USER SECRET [MUTUAL_USER MUTUAL_SECRET]
#                                          CHAP on a node ACL, or '-' for the TPG (demo mode)
#   lio discovery-auth USER SECRET [MUTUAL_USER MUTUAL_SECRET]
#   lio enable IQN | lio disable IQN
#   lio delete IQN                         target, its LUNs and their backstores
#   lio second-tpg IQN PORT [INITIATOR...] TPG 2 (a second target port) on PORT, the same
#                                          LUNs, node ACLs for the initiators named (else
#                                          demo mode), no CHAP
#   lio power-cycle IQN                    the target's devices freed and made again from
#                                          their medium and the APTPL files LIO wrote
#   lio show [IQN]                         the configuration, secrets left out
set -eu

CFS=/sys/kernel/config/target
DATA=/var/lib/ic/lio

tpg() { echo "$CFS/iscsi/$1/tpgt_1"; }

hba() {
    case "$1" in
    fileio) echo "$CFS/core/fileio_0" ;;
    ramdisk) echo "$CFS/core/rd_mcp_0" ;;
    *) echo "lio: unknown backstore type $1" >&2; exit 2 ;;
    esac
}

put() { # put FILE VALUE: write, and say which file refused what
    # No trailing newline: LIO keeps auth values (userid, password) verbatim, so
    # "secret\n" would become the CHAP secret.
    if ! printf '%s' "$2" > "$1" 2>/dev/null; then
        echo "lio: cannot write '$2' to $1" >&2
        exit 1
    fi
}

verb=${1:-}
[ $# -gt 0 ] && shift
case "$verb" in
setup)
    grep -q configfs /proc/mounts || mount -t configfs configfs /sys/kernel/config
    # Persistent-reservation (APTPL) and ALUA state go under dbroot; it can only be
    # changed while no device exists. LIO writes pr/aptpl_* on every REGISTER (even
    # with APTPL=0) and fails the command when pr/ is missing.
    mkdir -p "$DATA/dbroot/pr" "$DATA/dbroot/alua"
    [ "$(cat $CFS/dbroot)" = "$DATA/dbroot" ] || put "$CFS/dbroot" "$DATA/dbroot" || true
    mkdir -p "$CFS/iscsi"
    echo "kernel: $(uname -r)"
    echo "core: $(cat $CFS/version)"
    echo "iscsi: $(cat $CFS/iscsi/lio_version)"
    ;;
backstore)
    type=$1 name=$2 size=$3 bs=$4
    dir=$(hba "$type")/$name
    mkdir -p "$dir"
    case "$type" in
    fileio)
        mkdir -p "$DATA"
        put "$dir/control" "fd_dev_name=$DATA/$name.img,fd_dev_size=$size"
        ;;
    ramdisk)
        put "$dir/control" "rd_pages=$(( (size + 4095) / 4096 ))"
        ;;
    esac
    put "$dir/wwn/vpd_unit_serial" "$(cat /proc/sys/kernel/random/uuid)"
    put "$dir/enable" 1
    put "$dir/attrib/block_size" "$bs"
    ;;
target)
    mkdir -p "$(tpg "$1")"
    ;;
portal)
    mkdir -p "$(tpg "$1")/np/$2:$3"
    ;;
lun)
    iqn=$1 lun=$2 type=$3 name=$4
    dir=$(tpg "$iqn")/lun/lun_$lun
    mkdir -p "$dir"
    ln -s "$(hba "$type")/$name" "$dir/$name"
    ;;
attrib)
    put "$(tpg "$1")/attrib/$2" "$3"
    ;;
param)
    put "$(tpg "$1")/param/$2" "$3"
    ;;
acl)
    iqn=$1 ini=$2
    shift 2
    acl=$(tpg "$iqn")/acls/$ini
    mkdir -p "$acl"
    for lun in "$@"; do
        mkdir -p "$acl/lun_$lun"
        ln -s "$(tpg "$iqn")/lun/lun_$lun" "$acl/lun_$lun/lun_$lun"
    done
    ;;
auth)
    iqn=$1 ini=$2
    if [ "$ini" = "-" ]; then dir=$(tpg "$iqn")/auth; else dir=$(tpg "$iqn")/acls/$ini/auth; fi
    put "$dir/userid" "$3"
    put "$dir/password" "$4"
    if [ $# -ge 6 ]; then
        put "$dir/userid_mutual" "$5"
        put "$dir/password_mutual" "$6"
    fi
    ;;
discovery-auth)
    dir=$CFS/iscsi/discovery_auth
    put "$dir/userid" "$1"
    put "$dir/password" "$2"
    if [ $# -ge 4 ]; then
        put "$dir/userid_mutual" "$3"
        put "$dir/password_mutual" "$4"
    fi
    put "$dir/enforce_discovery_auth" 1
    ;;
enable)
    put "$(tpg "$1")/enable" 1
    ;;
disable)
    put "$(tpg "$1")/enable" 0
    ;;
delete)
    iqn=$1
    t=$(tpg "$iqn")
    [ -d "$t" ] || exit 0
    t2=$CFS/iscsi/$iqn/tpgt_2
    if [ -d "$t2" ]; then
        put "$t2/enable" 0 || true
        for acl in "$t2"/acls/*/; do
            [ -d "$acl" ] || continue
            for m in "$acl"lun_*/; do
                [ -d "$m" ] || continue
                for l in "$m"*; do [ -L "$l" ] && rm "$l"; done
                rmdir "$m"
            done
            rmdir "$acl"
        done
        for l in "$t2"/lun/lun_*/; do
            [ -d "$l" ] || continue
            for s in "$l"*; do [ -L "$s" ] && rm "$s"; done
            rmdir "$l"
        done
        for np in "$t2"/np/*/; do [ -d "$np" ] && rmdir "$np"; done
        rmdir "$t2"
    fi
    put "$t/enable" 0 || true
    for acl in "$t"/acls/*/; do
        [ -d "$acl" ] || continue
        for m in "$acl"lun_*/; do
            [ -d "$m" ] || continue
            for l in "$m"*; do [ -L "$l" ] && rm "$l"; done
            rmdir "$m"
        done
        rmdir "$acl"
    done
    stores=""
    for l in "$t"/lun/lun_*/; do
        [ -d "$l" ] || continue
        for s in "$l"*; do
            if [ -L "$s" ]; then
                stores="$stores $(readlink -f "$s")"
                rm "$s"
            fi
        done
        rmdir "$l"
    done
    for np in "$t"/np/*/; do [ -d "$np" ] && rmdir "$np"; done
    rmdir "$t"
    rmdir "$CFS/iscsi/$iqn"
    for s in $stores; do
        rmdir "$s"
        rm -f "$DATA/$(basename "$s").img"
    done
    ;;
second-tpg)
    # A second target port of the same target: TPG 2 with its own network portal and
    # the LUNs of TPG 1 (the same devices), without CHAP. Node ACLs with mapped LUNs
    # for the initiators named: LIO applies an ALL_TG_PT=1 registration only to
    # explicit mapped LUNs, never to demo-mode (dynamic) ones.
    t1=$(tpg "$1") t2=$CFS/iscsi/$1/tpgt_2 port=$2
    shift 2
    mkdir -p "$t2/np/0.0.0.0:$port"
    for l in "$t1"/lun/lun_*/; do
        [ -d "$l" ] || continue
        for s in "$l"*; do
            [ -L "$s" ] || continue
            mkdir -p "$t2/lun/$(basename "$l")"
            ln -s "$(readlink -f "$s")" "$t2/lun/$(basename "$l")/$(basename "$s")"
        done
    done
    if [ $# -gt 0 ]; then
        put "$t2/attrib/generate_node_acls" 0
        for ini in "$@"; do
            for l in "$t2"/lun/lun_*/; do
                [ -d "$l" ] || continue
                m=$t2/acls/$ini/$(basename "$l")
                mkdir -p "$m"
                ln -s "${l%/}" "$m/$(basename "$l")"
            done
        done
    else
        put "$t2/attrib/generate_node_acls" 1
        put "$t2/attrib/cache_dynamic_acls" 1
        put "$t2/attrib/demo_mode_write_protect" 0
    fi
    put "$t2/attrib/authentication" 0
    put "$t2/param/AuthMethod" "CHAP,None"
    put "$t2/enable" 1
    ;;
power-cycle)
    # A power loss of the target's logical units as the device server sees it: each
    # device (its in-kernel registrations and reservation) is freed, then made again
    # from what survives a power loss: its medium file, its unit serial number, and the
    # dbroot/pr/aptpl_<serial> file LIO wrote when APTPL was set. The file's records go
    # back through pr/res_aptpl_metadata before the device is exported, as targetcli's
    # restoreconfig does at boot (the kernel accepts them only while no export exists).
    t=$(tpg "$1")
    [ -d "$t" ] || { echo "lio: no target $1" >&2; exit 1; }
    put "$t/enable" 0
    saved=""
    for l in "$t"/lun/lun_*/; do
        [ -d "$l" ] || continue
        for s in "$l"*; do
            [ -L "$s" ] || continue
            dev=$(readlink -f "$s")
            saved="$saved $(basename "$l"):$dev"
            rm "$s"
        done
        rmdir "$l"
    done
    for entry in $saved; do
        lun=${entry%%:*} dev=${entry#*:}
        serial=$(sed 's/^.*: //' "$dev/wwn/vpd_unit_serial")
        bs=$(cat "$dev/attrib/block_size")
        size=$(sed -n 's/.*File: .* Size: \([0-9]*\).*/\1/p' "$dev/info")
        rmdir "$dev"
        mkdir "$dev"
        put "$dev/control" "fd_dev_name=$DATA/$(basename "$dev").img,fd_dev_size=$size"
        put "$dev/wwn/vpd_unit_serial" "$serial"
        put "$dev/enable" 1
        put "$dev/attrib/block_size" "$bs"
        restored=0
        if [ -f "$DATA/dbroot/pr/aptpl_$serial" ]; then
            rec=""
            while IFS= read -r line; do
                case "$line" in
                PR_REG_START*) rec="" ;;
                PR_REG_END*) put "$dev/pr/res_aptpl_metadata" "$rec"; restored=$((restored + 1)) ;;
                *=*) rec="${rec:+$rec,}$line" ;;
                esac
            done < "$DATA/dbroot/pr/aptpl_$serial"
        fi
        echo "$(basename "$dev"): power-cycled, $restored APTPL registration(s) restored"
        mkdir "$t/lun/$lun"
        ln -s "$dev" "$t/lun/$lun/$(basename "$dev")"
    done
    put "$t/enable" 1
    ;;
show)
    base=$CFS/iscsi
    [ $# -gt 0 ] && base=$CFS/iscsi/$1
    find "$CFS/core" "$base" -type l -o -type d | sort
    for f in "$base"/*/tpgt_1/param/* "$base"/tpgt_1/param/* "$base"/*/tpgt_1/attrib/* "$base"/tpgt_1/attrib/*; do
        [ -f "$f" ] && echo "${f#"$CFS/iscsi/"} = $(cat "$f" 2>/dev/null)"
    done
    ;;
*)
    sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//;/^set -eu/d'
    exit 2
    ;;
esac
exit 0
