#!/usr/bin/env python3
"""Packs one directory per platform into a multi-platform OCI image archive, reproducibly,
without Docker.

    oci.py OUT_TAR REF_NAME EPOCH OS/ARCH=SRC_DIR...

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) in a tar, as
`skopeo copy [--all] oci-archive:OUT_TAR ...` reads it: index.json holds one entry named
REF_NAME, an OCI image index with one single-layer image manifest per platform (in the
order given, each with its `platform`), so the archive is pushed as one multi-arch tag.
Beside it, the `manifest.json` of `docker save` pointing at the same blobs (as Docker
itself writes since v25), one image per platform tagged `tailscale-bridge:REF_NAME-ARCH`,
so `docker load` reads it too. Each layer is a gzip tar of its SRC_DIR's contents. Reproducible: entries sorted by path, every mtime EPOCH
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
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
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


def image(src, os_name, arch, epoch):
    """(config, layer_gz, manifest) of the single-layer image of src for os_name/arch."""
    layer = layer_tar(src, epoch)
    # mtime=0 and no file name: the gzip header is the same for every build.
    layer_gz = gzip.compress(layer, compresslevel=9, mtime=0)
    created = datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = canonical_json(
        {
            "architecture": arch,
            "os": os_name,
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
    return config, layer_gz, manifest


def main(argv):
    if len(argv) < 5:
        fail("usage: oci.py OUT_TAR REF_NAME EPOCH OS/ARCH=SRC_DIR...")
    out, ref, epoch_s = argv[1:4]
    try:
        epoch = int(epoch_s)
    except ValueError:
        fail(f"EPOCH must be an integer (seconds), got {epoch_s!r}")
    platforms = []
    for arg in argv[4:]:
        plat, sep, src = arg.partition("=")
        os_name, slash, arch = plat.partition("/")
        if not (sep and slash and os_name and arch and src):
            fail(f"{arg!r} is not OS/ARCH=SRC_DIR")
        if not os.path.isdir(src):
            fail(f"{src} is not a directory")
        if any(p[1] == arch and p[0] == os_name for p in platforms):
            fail(f"platform {plat} given twice")
        platforms.append((os_name, arch, src))

    blobs, entries, docker = {}, [], []
    for os_name, arch, src in platforms:
        config, layer_gz, manifest = image(src, os_name, arch, epoch)
        for b in (config, layer_gz, manifest):
            blobs[hashlib.sha256(b).hexdigest()] = b
        entry = descriptor(MEDIA_MANIFEST, manifest)
        entry["platform"] = {"architecture": arch, "os": os_name}
        entries.append(entry)
        docker.append(
            {
                "Config": "blobs/sha256/" + hashlib.sha256(config).hexdigest(),
                "RepoTags": [f"tailscale-bridge:{ref}-{arch}"],
                "Layers": ["blobs/sha256/" + hashlib.sha256(layer_gz).hexdigest()],
            }
        )
    image_index = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries})
    blobs[hashlib.sha256(image_index).hexdigest()] = image_index
    index_entry = descriptor(MEDIA_INDEX, image_index)
    index_entry["annotations"] = {"org.opencontainers.image.ref.name": ref}
    index = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [index_entry]})

    tmp = out + ".tmp"
    with open(tmp, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            add_dir(tar, "blobs", epoch)
            add_dir(tar, "blobs/sha256", epoch)
            for digest, data in sorted(blobs.items()):
                add_file(tar, "blobs/sha256/" + digest, data, 0o644, epoch)
            add_file(tar, "index.json", index, 0o644, epoch)
            add_file(tar, "manifest.json", canonical_json(docker), 0o644, epoch)
            add_file(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}), 0o644, epoch)
    os.replace(tmp, out)
    print(index_entry["digest"])


if __name__ == "__main__":
    main(sys.argv)
