"""Signing in, throttled per username and per client address.

Guessing passwords must stay slow whichever door is used (the web sign-in page, the API's session
sign-in, the admin), so the count lives in the authentication backend every one of them goes through:

1. Before checking a password, look for a lock on the username and on the client address (REMOTE_ADDR;
   behind a proxy, uvicorn takes it from X-Forwarded-For when FORWARDED_ALLOW_IPS trusts the proxy).
   Either lock refuses the attempt without checking the password.
2. A wrong password adds one to a counter per username and per address in the cache (Redis). Each counter
   lives SIGN_IN_WINDOW_SECONDS from its first failure; the failure that brings it to SIGN_IN_MAX_FAILURES
   sets a lock for SIGN_IN_WINDOW_SECONDS, holding the time it ends (what the refusal tells people).
3. A right password clears its username's counter (not its address's: one known account must not
   reset the count of guesses at others from the same address). Locks only ever concern their own
   username or address: everyone else signs in as usual.

Counters are fixed windows: at most SIGN_IN_MAX_FAILURES guesses per window and key, a little more across
a window's edge. Locking a username can be used to keep its owner out for a window; that is the price of
stopping guesses spread over many addresses.
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse


def _key(kind: str, value: str, part: str) -> str:
    # Hashed: usernames and addresses are personal data, and a cache key must stay short and plain.
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]
    return f"sign-in:{part}:{kind}:{digest}"


def _subjects(username: str | None, address: str) -> list[tuple[str, str]]:
    subjects = []
    if username:
        subjects.append(("user", username.casefold()))
    if address:
        subjects.append(("address", address))
    return subjects


def client_address(request: HttpRequest | None) -> str:
    return str(request.META.get("REMOTE_ADDR") or "") if request is not None else ""


def retry_after(username: str | None, address: str, now: float | None = None) -> int:
    """Seconds until this username and address may try again; 0 when neither is locked."""
    now = time.time() if now is None else now
    ends = [cache.get(_key(kind, value, "lock")) for kind, value in _subjects(username, address)]
    return max([math.ceil(end - now) for end in ends if end is not None and end > now], default=0)


def record_failure(username: str | None, address: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    window = settings.SIGN_IN_WINDOW_SECONDS
    for kind, value in _subjects(username, address):
        counter = _key(kind, value, "failures")
        cache.add(counter, 0, timeout=window)
        try:
            failures = cache.incr(counter)
        except ValueError:  # expired between add and incr: this failure starts a new window
            cache.set(counter, 1, timeout=window)
            failures = 1
        if failures >= settings.SIGN_IN_MAX_FAILURES:
            cache.set(_key(kind, value, "lock"), now + window, timeout=window)


def record_success(username: str | None) -> None:
    for kind, value in _subjects(username, ""):
        cache.delete(_key(kind, value, "failures"))


def refusal_sentence(seconds: int, now: float | None = None) -> str:
    """What a person reads when sign-in is refused: why, and when to try again."""
    now = time.time() if now is None else now
    at = datetime.fromtimestamp(now + seconds, tz=UTC).strftime("%H:%M UTC")
    wait = f"{seconds} seconds" if seconds < 120 else f"{math.ceil(seconds / 60)} minutes"
    return (
        "Too many failed sign-ins for this username or from this address. Try again in "
        f"{wait} (at {at}), or ask an admin to reset the password."
    )


class SignInThrottled(PermissionDenied):
    def __init__(self, seconds: int) -> None:
        super().__init__(refusal_sentence(seconds))
        self.seconds = seconds


class ThrottledModelBackend(ModelBackend):
    """Django's username and password check, refused while the username or the address is locked, and
    counting every wrong password (see the module docstring)."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        address = client_address(request)
        seconds = retry_after(username, address)
        if seconds:
            raise SignInThrottled(seconds)  # Django's authenticate() treats it as a refusal
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            record_failure(username, address)
        else:
            record_success(username)
        return user


class SignInForm(AuthenticationForm):
    """The sign-in page's form: a locked username or address is refused with when to try again."""

    retry_after_seconds = 0

    def clean(self) -> dict[str, Any]:
        seconds = retry_after(self.cleaned_data.get("username"), client_address(self.request))
        if seconds:
            self.retry_after_seconds = seconds
            raise ValidationError(refusal_sentence(seconds), code="throttled")
        return super().clean()


class SignInView(auth_views.LoginView):
    form_class = SignInForm
    redirect_authenticated_user = True

    def form_invalid(self, form: SignInForm) -> HttpResponse:  # type: ignore[override]
        response = super().form_invalid(form)
        if form.retry_after_seconds:
            response.status_code = 429
            response["Retry-After"] = str(form.retry_after_seconds)
        return response
