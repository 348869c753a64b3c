from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from lora_engine.tiny import save_tiny_model
from webapp.basemodels.actions import register_local_model
from webapp.basemodels.models import BaseModel
from webapp.lib.demo_login import DEMO_MODEL_NAME


class Command(BaseCommand):
    help = "Build the tiny random-init demo model offline (once) and register it as a public base model."

    def add_arguments(self, parser):
        parser.add_argument("--owner", default=None, help="Username owning the record (default: first superuser).")

    def handle(self, *args, owner=None, **options):
        existing = BaseModel.objects.filter(name=DEMO_MODEL_NAME).first()
        if existing:
            self.stdout.write(f"Demo model already registered: {existing.name} ({existing.local_path})")
            return
        User = get_user_model()
        user = User.objects.get(username=owner) if owner else User.objects.filter(is_superuser=True).first()
        if user is None:
            user = User.objects.create_user("studio-admin", is_staff=True, is_superuser=True)
            user.set_unusable_password()
            user.save()
        model_dir = settings.DATA_DIR / "models" / DEMO_MODEL_NAME
        save_tiny_model(model_dir, arch="llama", hidden_size=64, layers=2, heads=4)
        model = register_local_model(user, DEMO_MODEL_NAME, str(model_dir), public=True)
        self.stdout.write(f"Demo model registered: {model.name} ({model.parameter_count:,} parameters)")
