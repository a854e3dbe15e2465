#!/usr/bin/env bash
# Add a device (or the cloud) to the broker's password file and ACL.
#   ./add-device.sh DEVICE_ID GROUP      # prompts for the password (or PASSWORD=... in the environment)
#   ./add-device.sh edgeloop-cloud --cloud
#   ./add-device.sh ops-watch --alerts      # read-only: the cloud's alerts (Node-RED, Telegraf, a pager bridge)
#   ./add-device.sh plc-1 --requester       # asks devices for predictions over MQTT (agent setting mqtt_predict):
#                                           # publishes requests, reads answers on .../predict/response/plc-1/#
#                                           # (its own, MQTT 5) and .../predict/response (shared: MQTT 3.1.1)
# Then reload Mosquitto (kill -HUP) to apply.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 DEVICE_ID GROUP | $0 CLOUD_USER --cloud | $0 USER --alerts | $0 USER --requester" >&2; exit 2; }
user="$1"; group="$2"
[[ "$user" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || { echo "bad id: $user" >&2; exit 2; }
[ -f acl ] || cp acl.head acl
touch passwd
if [ -n "${PASSWORD:-}" ]; then mosquitto_passwd -b passwd "$user" "$PASSWORD"; else mosquitto_passwd passwd "$user"; fi
if [ "$group" = "--cloud" ]; then
    printf '\nuser %s\ntopic readwrite edgeloop/#\n' "$user" >> acl
elif [ "$group" = "--alerts" ]; then
    printf '\nuser %s\ntopic read edgeloop/v1/alerts/#\n' "$user" >> acl
elif [ "$group" = "--requester" ]; then
    printf '\nuser %s\ntopic write edgeloop/v1/devices/+/predict\ntopic read edgeloop/v1/devices/+/predict/response/%s/#\ntopic read edgeloop/v1/devices/+/predict/response\n' "$user" "$user" >> acl
else
    [[ "$group" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || { echo "bad group: $group" >&2; exit 2; }
    printf '\nuser %s\ntopic read edgeloop/v1/groups/%s/desired\n' "$user" "$group" >> acl
fi
echo "added $user"
