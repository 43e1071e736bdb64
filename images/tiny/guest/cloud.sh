#!/bin/sh
# The tiny guest's stand-in for cloud-init (busybox sh; see images/tiny/README.md).
#
# Started by /init once per boot, after HAVEN-TINY-BOOTED, with its output on the console.
# In the order cloud-init does it:
#   1. DHCP on every NIC (busybox udhcpc, /etc/haven/udhcpc.script applies the lease);
#   2. the instance data: the config drive (an ISO9660 block device labelled config-2) if one
#      is attached, else the metadata service at 169.254.169.254, with retries;
#   3. hostname, root's authorized_keys from public_keys, an SSH server (dropbear) on port 22
#      with a host key made at boot;
#   4. the user data, if it is a script ("#!"), its output on the console;
#   5. HAVEN-TINY-READY.
# Every step reports on a console line of its own ("HAVEN-TINY-<WHAT> ..."), the lines tests
# and operators read; a step that cannot be done says so and the boot goes on, as a cloud
# image does (a VM without metadata still boots and still answers on its console).
# No step ever trusts partial data: a meta_data.json that does not parse is not used.

STATE=/run/haven
DS=$STATE/datasource
METADATA_URL=http://169.254.169.254/openstack/latest
# Metadata service: attempts at meta_data.json before giving up (each waits up to 10 s for
# an answer, then 2 s before the next), like cloud-init's patience with a slow service.
METADATA_TRIES=30
MOUNTPOINT=/mnt/config
# Seconds to wait for a late lease after udhcpc's first round (4 tries 2 s apart) failed.
DHCP_EXTRA_WAIT=20

# A console line of its own: the leading newline ends whatever the console shell printed.
say() { printf '\n%s\n' "$*"; }

load_modules() {
    while read -r module params; do
        [ -n "$module" ] || continue
        # shellcheck disable=SC2086 # module parameters are words
        insmod "/lib/modules/$module.ko" $params || say "HAVEN-WARN insmod $module failed"
    done < /etc/haven/cloud-modules
}

# DHCP on every NIC at once; return when each has a lease or gave up its first round (its
# udhcpc then keeps trying in the background, and keeps renewing the lease it got).
network() {
    ip link set lo up
    mkdir -p "$STATE/net"
    nics=""
    for path in /sys/class/net/*; do
        nic=${path##*/}
        [ -e "$path/device" ] || continue      # a real NIC, not lo or a virtual device
        nics="$nics $nic"
        ip link set dev "$nic" up
        udhcpc -i "$nic" -s /etc/haven/udhcpc.script -O staticroutes -O mtu -O search \
            -t 4 -T 2 -A 5 -b > "/var/log/udhcpc.$nic.log" 2>&1 &
    done
    wait
    if [ -z "$nics" ]; then
        say "HAVEN-TINY-NET none"
        return
    fi
    # No lease in udhcpc's first round: give its next round (in the background) a chance.
    i=0
    while ! have_lease && [ $i -lt $DHCP_EXTRA_WAIT ]; do
        sleep 1
        i=$((i + 1))
    done
    for nic in $nics; do
        if [ -s "$STATE/net/$nic" ]; then
            say "HAVEN-TINY-NET $nic $(head -n 1 "$STATE/net/$nic")"
        else
            say "HAVEN-TINY-NET $nic none"
        fi
    done
}

have_lease() { ls "$STATE"/net/* > /dev/null 2>&1; }

# The ISO9660 volume label of a block device, or nothing (the primary volume descriptor is
# sector 16 of 2048 bytes: type 1, "CD001", the 32-byte label at byte 40, space padded).
iso_label() {
    pvd=$(dd if="$1" bs=2048 skip=16 count=1 2>/dev/null | head -c 72 | tr '\000' ' ')
    [ "$(printf '%s' "$pvd" | cut -c 2-6)" = CD001 ] || return 0
    printf '%s' "$pvd" | cut -c 41-72 | sed 's/ *$//'
}

config_drive() {
    for path in /sys/class/block/*; do
        dev=/dev/${path##*/}
        [ -b "$dev" ] || continue
        label=$(iso_label "$dev" | tr 'A-Z' 'a-z')
        [ "$label" = config-2 ] && { echo "$dev"; return 0; }
    done
    return 1
}

# Copy openstack/latest/{meta_data.json,user_data} off the config drive.
read_config_drive() {
    mkdir -p "$MOUNTPOINT"
    if ! mount -t iso9660 -o ro "$1" "$MOUNTPOINT"; then
        say "HAVEN-WARN config drive $1 does not mount"
        return 1
    fi
    ok=0
    cp "$MOUNTPOINT/openstack/latest/meta_data.json" "$DS/meta_data.json" || ok=1
    if [ -f "$MOUNTPOINT/openstack/latest/user_data" ]; then
        cp "$MOUNTPOINT/openstack/latest/user_data" "$DS/user_data" || ok=1
    fi
    umount "$MOUNTPOINT"
    return $ok
}

# fetch URL FILE: 0 fetched, 2 the service says there is no such file (404), 1 anything else.
fetch() {
    rm -f "$2"
    # busybox's wget here has no -T (it crashes): timeout bounds a hung connection instead.
    if err=$(timeout 10 wget -q -O "$2" "$1" 2>&1); then
        return 0
    fi
    rm -f "$2"
    case $err in
        *" 404 "*) return 2 ;;
    esac
    echo "$err" >> /var/log/metadata.log
    return 1
}

read_metadata_service() {
    i=1
    while ! fetch "$METADATA_URL/meta_data.json" "$DS/meta_data.json"; do
        if [ $i -ge $METADATA_TRIES ]; then
            return 1
        fi
        i=$((i + 1))
        sleep 2
    done
    i=1
    while :; do
        fetch "$METADATA_URL/user_data" "$DS/user_data"
        case $? in
            0|2) return 0 ;;     # 404: this instance has no user data
        esac
        if [ $i -ge 5 ]; then
            say "HAVEN-WARN user_data could not be fetched"
            return 0
        fi
        i=$((i + 1))
        sleep 2
    done
}

# The instance data into $DS/meta (flattened by json.awk); prints the source on the console.
instance_data() {
    rm -rf "$DS"
    mkdir -p "$DS"
    chmod 700 "$DS"   # user data may hold secrets
    source=none
    if dev=$(config_drive); then
        read_config_drive "$dev" && source="configdrive $dev"
    fi
    # No config drive, or one without meta_data.json: the next source, as cloud-init does.
    if [ "$source" = none ] && have_lease; then
        rm -f "$DS"/*
        read_metadata_service && source="metadata-service $METADATA_URL"
    fi
    if [ "$source" != none ] && ! awk -f /etc/haven/json.awk "$DS/meta_data.json" > "$DS/meta"
    then
        say "HAVEN-WARN meta_data.json is not valid JSON: not used"
        rm -f "$DS/meta" "$DS/user_data"
        source=none
    fi
    say "HAVEN-TINY-METADATA $source"
    [ "$source" != none ]
}

# meta KEY: the value at KEY in meta_data.json (json.awk's path).
meta() { awk -F '\t' -v key="$1" '$1 == key { sub(/^[^\t]*\t/, ""); print; exit }' "$DS/meta"; }

set_hostname() {
    name=$(meta hostname)
    [ -n "$name" ] || name=$(meta name)
    # Only what a hostname may hold; the first label is the hostname, the rest its domain.
    name=$(printf '%s' "$name" | tr -cd 'A-Za-z0-9.-' | cut -c 1-253)
    short=${name%%.*}
    [ -n "$short" ] || return 0
    hostname "$short"
    echo "$short" > /etc/hostname
    printf '127.0.0.1 localhost\n127.0.1.1 %s %s\n' "$name" "$short" > /etc/hosts
    say "HAVEN-TINY-HOSTNAME $short"
}

install_keys() {
    umask 077
    mkdir -p /root/.ssh
    awk -F '\t' 'index($1, "public_keys/") == 1 { sub(/^[^\t]*\t/, ""); print }' "$DS/meta" \
        > /root/.ssh/authorized_keys.tmp
    mv -f /root/.ssh/authorized_keys.tmp /root/.ssh/authorized_keys
    umask 022
    say "HAVEN-TINY-KEYS $(grep -c . /root/.ssh/authorized_keys)"
}

# dropbear on port 22: a fresh ed25519 host key (the guest's root is a RAM disk, so every
# boot is a first boot), its public half on the console as cloud-init prints its keys: the
# console is how a client learns the key out of band.
start_ssh() {
    mkdir -p /etc/dropbear /dev/pts
    grep -q ' /dev/pts ' /proc/mounts || mount -t devpts devpts /dev/pts
    key=/etc/dropbear/dropbear_ed25519_host_key
    [ -s $key ] || dropbearkey -t ed25519 -f $key > /dev/null 2>&1
    # shellcheck disable=SC2046 # "type base64 comment" into words
    set -- $(dropbearkey -y -f $key 2>/dev/null | grep '^ssh-')
    if [ -z "$2" ]; then
        say "HAVEN-WARN no SSH host key"
        return
    fi
    say "HAVEN-TINY-HOSTKEY $1 $2"
    # -s: keys only, no passwords; -F -E: foreground, log to stderr (no syslog here).
    dropbear -F -E -s -p 22 -r $key > /var/log/dropbear.log 2>&1 &
    # The line means "connect now": wait until the socket listens (dropbear's start, its
    # libraries loaded, takes seconds under TCG; until then a connection is reset).
    i=0
    while ! listening 22; do
        if [ $i -ge 300 ] || ! kill -0 $! 2>/dev/null; then
            say "HAVEN-WARN dropbear is not listening: $(tail -n 3 /var/log/dropbear.log)"
            return
        fi
        sleep 0.1
        i=$((i + 1))
    done
    say "HAVEN-TINY-SSH 22"
}

# listening PORT: a TCP socket listens on PORT (state 0A in /proc/net/tcp or tcp6).
listening() {
    port=$(printf ':%04X' "$1")
    awk -v port="$port" '$2 ~ port "$" && $4 == "0A" { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# The user data, if it is a script, as cloud-init's scripts-user runs it: once, as root, its
# output (stdout and stderr) on the console and in /var/log/user-data.log.
user_data() {
    file=$DS/user_data
    if [ ! -s "$file" ]; then
        say "HAVEN-TINY-USERDATA none"
        return
    fi
    if [ "$(head -c 2 "$file")" != "#!" ]; then
        say "HAVEN-TINY-USERDATA not-a-script"
        return
    fi
    script=$STATE/user-data.script
    cp "$file" "$script"
    chmod 700 "$script"
    say "HAVEN-TINY-USERDATA start"
    { (cd /root && HOME=/root "$script" < /dev/null); echo $? > "$STATE/user-data.rc"; } 2>&1 \
        | tee /var/log/user-data.log
    say "HAVEN-TINY-USERDATA exit=$(cat "$STATE/user-data.rc")"
}

mkdir -p "$STATE" /var/log
load_modules
network
if instance_data; then
    set_hostname
    install_keys
    start_ssh
    user_data
else
    start_ssh
fi
say "HAVEN-TINY-READY"
