#!/usr/bin/env python3
"""Packs a directory into a single-layer OCI image archive, reproducibly, without Docker.

    oci.py SRC_DIR OUT_TAR REF_NAME EPOCH

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) in a tar, as
`skopeo copy oci-archive:OUT_TAR ...` reads it, plus the `manifest.json` of `docker save`
pointing at the same blobs (as Docker itself writes since v25), so `crane push OUT_TAR ...`
and `docker load` read it too. The layer is a
gzip tar of SRC_DIR's contents. Reproducible: entries sorted by path, every mtime EPOCH
(SOURCE_DATE_EPOCH), owner 0:0 without names, modes normalised to 0755 (directories and
executables) or 0644, gzip header without name or time. Only directories and regular files
are accepted: a Talos extension may not hold special files, and symlinks are not needed.
"""

import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
from datetime import datetime, timezone

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def fail(msg):
    print(f"oci.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def tarinfo(name, kind, size, mode, epoch):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = mode
    ti.mtime = epoch
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def add_file(tar, name, data, mode, epoch):
    tar.addfile(tarinfo(name, tarfile.REGTYPE, len(data), mode, epoch), io.BytesIO(data))


def add_dir(tar, name, epoch):
    tar.addfile(tarinfo(name, tarfile.DIRTYPE, 0, 0o755, epoch))


def layer_tar(src, epoch):
    """The uncompressed layer: every entry under src, relative, sorted."""
    entries = []
    for root, dirs, files in os.walk(src):
        for d in dirs:
            entries.append(os.path.join(root, d))
        for f in files:
            entries.append(os.path.join(root, f))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(entries, key=lambda p: os.path.relpath(p, src)):
            rel = os.path.relpath(path, src)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                add_dir(tar, rel, epoch)
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                with open(path, "rb") as fh:
                    add_file(tar, rel, fh.read(), mode, epoch)
            else:
                fail(f"{path}: only directories and regular files may be in the image")
    return buf.getvalue()


def descriptor(media_type, data):
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main(argv):
    if len(argv) != 5:
        fail("usage: oci.py SRC_DIR OUT_TAR REF_NAME EPOCH")
    src, out, ref, epoch_s = argv[1:]
    if not os.path.isdir(src):
        fail(f"{src} is not a directory")
    try:
        epoch = int(epoch_s)
    except ValueError:
        fail(f"EPOCH must be an integer (seconds), got {epoch_s!r}")

    layer = layer_tar(src, epoch)
    # mtime=0 and no file name: the gzip header is the same for every build.
    layer_gz = gzip.compress(layer, compresslevel=9, mtime=0)
    created = datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()],
            },
            "history": [{"created": created, "created_by": "tsbridge scripts/oci.py"}],
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": descriptor(MEDIA_CONFIG, config),
            "layers": [descriptor(MEDIA_LAYER, layer_gz)],
        }
    )
    index_entry = descriptor(MEDIA_MANIFEST, manifest)
    index_entry["annotations"] = {"org.opencontainers.image.ref.name": ref}
    index = canonical_json({"schemaVersion": 2, "manifests": [index_entry]})

    docker_manifest = canonical_json(
        [
            {
                "Config": "blobs/sha256/" + hashlib.sha256(config).hexdigest(),
                "RepoTags": ["tailscale-bridge:" + ref],
                "Layers": ["blobs/sha256/" + hashlib.sha256(layer_gz).hexdigest()],
            }
        ]
    )
    blobs = sorted({hashlib.sha256(b).hexdigest(): b for b in (config, layer_gz, manifest)}.items())
    tmp = out + ".tmp"
    with open(tmp, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            add_dir(tar, "blobs", epoch)
            add_dir(tar, "blobs/sha256", epoch)
            for digest, data in blobs:
                add_file(tar, "blobs/sha256/" + digest, data, 0o644, epoch)
            add_file(tar, "index.json", index, 0o644, epoch)
            add_file(tar, "manifest.json", docker_manifest, 0o644, epoch)
            add_file(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}), 0o644, epoch)
    os.replace(tmp, out)
    print(index_entry["digest"])


if __name__ == "__main__":
    main(sys.argv)
