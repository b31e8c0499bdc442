#!/bin/sh
echo "vm-test: hello"; /usr/sbin/ip netns add x && /usr/sbin/ip netns list; /usr/sbin/nft list tables; ls /dev/net/tun; lsmod | wc -l
