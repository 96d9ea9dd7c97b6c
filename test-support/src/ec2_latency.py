"""EC2's response times and a log of EC2 calls, for benchmarks (moto_server.py installs it).

moto answers in about a millisecond; EC2 takes tens to hundreds of milliseconds per call. A
benchmark that measures how ipamd copes with EC2 needs EC2's times, and wants to know which calls
were made. This module wraps every request of the launcher's WSGI application:

* `VCNI_EC2_LATENCY`: a JSON object of EC2 Action name -> delay in seconds (a number >= 0), with
  an optional `"*"` for every other action. An EC2 request sleeps its action's delay before it
  queues for the launcher's lock, so concurrent calls overlap as they do on EC2 while moto's state
  still changes one request at a time. Absent or empty: no delay.
* `VCNI_EC2_LATENCY_CLIENTS`: comma-separated IPv4 CIDRs; only requests whose client address
  (`REMOTE_ADDR`) is inside one are delayed. Absent or empty: every client.
* `VCNI_EC2_CALL_LOG=1`: after each EC2 request is served, one line on stderr (moto's log):
  `vcni-ec2-call action=<Action> client=<REMOTE_ADDR> delay_ms=<int> status=<HTTP status>`,
  delayed or not. `0` or absent: no lines.

A request is an EC2 request when its SigV4 credential scope names `ec2`, or it is unsigned and
carries an `Action`. The Action comes from the query string, or, for a form POST (as the SDKs
send EC2's query protocol), from the body, which is read using `CONTENT_LENGTH` and put back as
the same bytes for moto to parse. With none of the variables set nothing is read or logged.

A bad value makes the launcher exit at start with a message naming the variable
(`configure` raises `ConfigError`).
"""

import io
import ipaddress
import json
import math
import os
import sys
import threading
import time
import urllib.parse

LATENCY_ENV = "VCNI_EC2_LATENCY"
CLIENTS_ENV = "VCNI_EC2_LATENCY_CLIENTS"
CALL_LOG_ENV = "VCNI_EC2_CALL_LOG"
# The first word of a call log line (test-support/src/moto.rs parses them).
CALL_LOG_TAG = "vcni-ec2-call"
# The key of the delay of every action without its own.
DEFAULT_KEY = "*"
# A request the wrapped application raised on is answered 500 by the server.
_FAILED_STATUS = 500

_WRITE_LOCK = threading.Lock()


class ConfigError(ValueError):
    """A variable has a value this module cannot use; the message names the variable."""


class Config:
    """Delays by action, the clients they apply to (None: every client), the call log switch."""

    def __init__(self, per_action=None, default=0.0, clients=None, call_log=False):
        self.per_action = dict(per_action or {})
        self.default = float(default)
        self.clients = None if clients is None else list(clients)
        self.call_log = bool(call_log)

    @property
    def delays(self):
        return self.default > 0 or any(d > 0 for d in self.per_action.values())

    @property
    def active(self):
        """Whether requests need looking at at all."""
        return self.delays or self.call_log

    def delay(self, action, client):
        """Seconds `action` from `client` (a REMOTE_ADDR) waits."""
        if not self.delays or not self._delayed_client(client):
            return 0.0
        return self.per_action.get(action, self.default)

    def _delayed_client(self, client):
        if self.clients is None:
            return True
        try:
            addr = ipaddress.IPv4Address(client)
        except ValueError:
            return False
        return any(addr in net for net in self.clients)


def parse(environ):
    """The Config that `environ` (a mapping like os.environ) asks for; ConfigError if bad."""
    per_action, default = _parse_latency(environ.get(LATENCY_ENV, "").strip())
    clients = _parse_clients(environ.get(CLIENTS_ENV, "").strip())
    call_log = environ.get(CALL_LOG_ENV, "").strip()
    if call_log not in ("", "0", "1"):
        raise ConfigError(f"{CALL_LOG_ENV}={call_log!r}: expected 1 (log EC2 calls) or 0")
    return Config(per_action, default, clients, call_log == "1")


def _parse_latency(text):
    if not text:
        return {}, 0.0
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{LATENCY_ENV} is not JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"{LATENCY_ENV} must be a JSON object of EC2 action -> seconds, not {text!r}"
        )
    per_action = {}
    for action, seconds in value.items():
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise ConfigError(
                f"{LATENCY_ENV}: the delay of {action!r} must be a number of seconds >= 0, "
                f"not {json.dumps(seconds)}"
            )
        if not action:
            raise ConfigError(f"{LATENCY_ENV}: an empty action name")
        per_action[action] = float(seconds)
    default = per_action.pop(DEFAULT_KEY, 0.0)
    return per_action, default


def _parse_clients(text):
    if not text:
        return None
    clients = []
    for item in text.split(","):
        try:
            clients.append(ipaddress.IPv4Network(item.strip(), strict=False))
        except ValueError as err:
            raise ConfigError(f"{CLIENTS_ENV}: {item.strip()!r} is not an IPv4 CIDR ({err})") from None
    return clients


_config = Config()


def configure(environ=None):
    """Reads the variables from `environ` (default os.environ); raises ConfigError if bad."""
    global _config
    _config = parse(os.environ if environ is None else environ)
    return _config


def serve(environ, start_response, call):
    """Serves one WSGI request through `call(environ, start_response)`: an EC2 request first
    sleeps its delay, and is logged once served when the call log is on."""
    config = _config
    if not config.active:
        return call(environ, start_response)
    action = ec2_action(environ)
    if action is None:
        return call(environ, start_response)
    client = environ.get("REMOTE_ADDR", "")
    delay = config.delay(action, client)
    if delay > 0:
        time.sleep(delay)
    if not config.call_log:
        return call(environ, start_response)
    statuses = []

    def recording_start_response(status, headers, exc_info=None):
        statuses.append(status)
        return start_response(status, headers, exc_info)

    try:
        return call(environ, recording_start_response)
    finally:
        status = _status_code(statuses[-1]) if statuses else _FAILED_STATUS
        _log(
            f"{CALL_LOG_TAG} action={action} client={client} "
            f"delay_ms={round(delay * 1000)} status={status}"
        )


def ec2_action(environ):
    """The EC2 Action of a request, or None when it is not an EC2 request."""
    service = _signed_service(environ.get("HTTP_AUTHORIZATION", ""))
    if service is not None and service != "ec2":
        return None
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if "Action" in query:
        return query["Action"][0]
    body = _form_body(environ)
    if body:
        form = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))
        if "Action" in form:
            return form["Action"][0]
    return None


def _signed_service(authorization):
    """The service of a SigV4 Authorization header's credential scope; None if unsigned."""
    if "Credential=" not in authorization:
        return None
    scope = authorization.split("Credential=", 1)[1].split(",", 1)[0].strip()
    parts = scope.split("/")
    return parts[3].lower() if len(parts) == 5 else ""


def _form_body(environ):
    """A form POST's body, read and put back as the same bytes; None for any other request."""
    if environ.get("REQUEST_METHOD") != "POST":
        return None
    if not environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length <= 0:
        return None
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _status_code(status):
    try:
        return int(status.split(" ", 1)[0])
    except ValueError:
        return _FAILED_STATUS


def _log(line):
    # One write per line, so concurrent requests and werkzeug's request log never mix within one.
    with _WRITE_LOCK:
        sys.stderr.flush()
        os.write(sys.stderr.fileno(), (line + "\n").encode("utf-8", errors="replace"))
