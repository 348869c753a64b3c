from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from webapp.accounts.keys import create_api_key


class Command(BaseCommand):
    help = "Create an API key for USERNAME and print it (the last line of output is the key)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label to tell keys apart.")

    def handle(self, *args, username: str, name: str, **options):
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user named {username!r}. Create one with `manage.py createsuperuser`.") from None
        _, raw_key = create_api_key(user, name=name)
        self.stderr.write(f"API key for {username} (shown once, store it now):")
        self.stdout.write(raw_key)
