"""Recompute Adapter.size_bytes as the adapter's own files.

Trained adapters used to record the size of their whole directory, resume checkpoints included (an r16 adapter
of 132 KB showed 1.2 MB). The size now counts only the files a download holds; rows whose directory is gone
keep the figure they had.
"""

from pathlib import Path

from django.conf import settings
from django.db import migrations

# Frozen here (not imported from webapp.adapters.actions) so this migration keeps meaning what it meant.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "training_args.json")


def adapter_files_size(adapter_dir: Path) -> int | None:
    paths = [adapter_dir / name for name in ADAPTER_FILES]
    if not any(path.is_file() for path in paths):
        return None
    return sum(path.stat().st_size for path in paths if path.is_file())


def recompute_sizes(apps, schema_editor) -> None:
    Adapter = apps.get_model("adapters", "Adapter")
    for adapter in Adapter.objects.only("id", "storage_path", "size_bytes").iterator():
        size = adapter_files_size(Path(settings.DATA_DIR) / adapter.storage_path)
        if size is not None and size != adapter.size_bytes:
            Adapter.objects.filter(pk=adapter.pk).update(size_bytes=size)


class Migration(migrations.Migration):

    dependencies = [
        ("adapters", "0003_unclaimed_deliveries"),
    ]

    operations = [
        migrations.RunPython(recompute_sizes, migrations.RunPython.noop),
    ]
