"""boto3 sessions and AWS errors as one-line user errors. Clients are injectable everywhere."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from facefleet.errors import FacefleetError

T = TypeVar("T")


def client(service: str, region: str | None = None, session: Any = None) -> Any:
    try:
        import boto3
    except ImportError:
        raise FacefleetError("operator tools need boto3: pip install 'facefleet[cloud]'") from None
    session = session or boto3.session.Session()
    region = region or session.region_name
    if not region:
        raise FacefleetError("no AWS region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION")
    return session.client(service, region_name=region)


def error_code(e: Exception) -> str:
    return getattr(e, "response", {}).get("Error", {}).get("Code", "")


def aws_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn botocore's credential and API errors into FacefleetError (one line, exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

        try:
            return fn(*args, **kwargs)
        except NoCredentialsError:
            raise FacefleetError("AWS credentials not found (configure a profile, or set AWS_ACCESS_KEY_ID / "
                                 "AWS_SECRET_ACCESS_KEY)") from None
        except NoRegionError:
            raise FacefleetError("no AWS region: pass --region or set AWS_REGION") from None
        except ClientError as e:
            msg = e.response.get("Error", {}).get("Message", str(e))
            raise FacefleetError(f"AWS {e.operation_name} failed: {error_code(e)}: {msg}") from None
        except BotoCoreError as e:
            raise FacefleetError(f"AWS error: {e}") from None

    return wrapper
