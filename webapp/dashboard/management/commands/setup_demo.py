from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from webapp.dashboard.demo_data import demo_jsonl
from webapp.datasets.actions import create_dataset
from webapp.datasets.models import Dataset
from webapp.lib.demo_login import DEMO_PASSWORD, DEMO_USERNAME


class Command(BaseCommand):
    help = "Create (once) the demo login, the tiny demo base model and a small demo data set."

    def handle(self, *args, **options):
        User = get_user_model()
        user, created = User.objects.get_or_create(username=DEMO_USERNAME, defaults={"is_staff": True})
        if created:
            user.set_password(DEMO_PASSWORD)
            user.is_superuser = True
            user.save()
            self.stdout.write(f"Created the demo login {DEMO_USERNAME} / {DEMO_PASSWORD}")
        call_command("create_demo_model", owner=DEMO_USERNAME, stdout=self.stdout)
        if not Dataset.objects.filter(owner=user, name="demo-colours.jsonl").exists():
            create_dataset(user, "demo-colours.jsonl", [demo_jsonl()])
            self.stdout.write("Created the demo data set demo-colours.jsonl")
