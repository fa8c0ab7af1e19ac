from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


# Who may manage what inside an organisation. Platform admins (staff) may do everything everywhere.
MANAGERS = (Role.OWNER, Role.ADMIN)
