"""What each role may do in an organisation: one table, which the permission checks read and the
organisation page shows. tests/accounts/test_rights.py tries every row as every role against the real
endpoints, so the table cannot drift from what the service does.

Platform admins (staff) may do everything everywhere, and only they change quotas.
"""

from __future__ import annotations

from dataclasses import dataclass

from marketplace.accounts.choices import MANAGERS, Role

EVERYONE = (Role.OWNER, Role.ADMIN, Role.MEMBER)


@dataclass(frozen=True)
class Right:
    name: str
    description: str  # what the organisation page says, after "may"
    roles: tuple[str, ...]

    def allows(self, role: str | None) -> bool:
        return role in self.roles


SEE = Right("see", "see the organisation's deployments, API keys, usage, quota and members", EVERYONE)
DEPLOY = Right(
    "deploy", "deploy subscribed models, scale and delete deployments, use the playground", EVERYONE
)
# A member who may deploy may also call what they deploy: a key they create is revoked when they leave.
CREATE_KEYS = Right("create_keys", "create API keys, and change or revoke the keys they created", EVERYONE)
MANAGE_KEYS = Right("manage_keys", "change or revoke anyone's API keys", MANAGERS)
SUBSCRIBE = Right("subscribe", "subscribe to models (accept their licenses) and unsubscribe", MANAGERS)
MANAGE_MEMBERS = Right("manage_members", "add and remove members and change their roles", MANAGERS)
MANAGE_OWNERS = Right("manage_owners", "make someone an owner, or remove an owner", (Role.OWNER,))
LEARNING = Right(
    "learning", "read logged prompts and answers, change log settings, run datasets and evaluations", MANAGERS
)

RIGHTS = (SEE, DEPLOY, CREATE_KEYS, MANAGE_KEYS, SUBSCRIBE, MANAGE_MEMBERS, MANAGE_OWNERS, LEARNING)


def table() -> list[dict[str, object]]:
    """The rights as the organisation page shows them: one row each, a yes or no per role."""
    return [
        {"description": right.description, "allowed": [right.allows(role) for role in EVERYONE]}
        for right in RIGHTS
    ]
