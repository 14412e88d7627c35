"""The Batch REST data plane over `BatchState`: routes, paging, OData errors, files.

Shapes follow the Batch REST reference (api-version 2025-06-01; 2024-02-01.19.0 sends the same
JSON): list responses are {"odata.metadata", "value", "odata.nextLink"}; a created resource
answers 201 with ETag, Last-Modified and DataServiceId; errors are OData bodies (see errors.py).
"""
from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from . import errors, odata, schema
from .errors import BatchError
from .schema import request as request_schema
from .model import Node, Task
from .state import MAX_COLLECTION_BYTES, MAX_TASKS_PER_COLLECTION, BatchState
from .timeutil import parse_iso, rfc1123, utcnow
from .wire import Request, Response

API_VERSIONS = {
    "2025-06-01", "2025-06-01.21.0", "2024-07-01.20.0", "2024-02-01.19.0", "2023-11-01.18.0", "2023-05-01.17.0", "2022-10-01.16.0",
}
MAX_RESULTS = 1000

Handler = Callable[..., Response]


class Route:
    def __init__(self, method: str, pattern: str, handler: Handler):
        self.method = method
        self.regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        self.file_regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern.replace("{path}", "(?P<path>.+)")) + "$") if "{path}" in pattern else None
        self.handler = handler


class BatchApi:
    """Maps requests to `BatchState` operations; every handler returns a `Response`."""

    def __init__(self, state: BatchState):
        self.state = state
        self.routes: list[Route] = []
        r = self._route
        r("GET", "/supportedimages", self.list_supported_images)
        r("GET", "/nodecounts", self.list_pool_node_counts)
        r("GET", "/pools", self.list_pools)
        r("POST", "/pools", self.add_pool)
        r("GET", "/pools/{pool}", self.get_pool)
        r("HEAD", "/pools/{pool}", self.pool_exists)
        r("PATCH", "/pools/{pool}", self.patch_pool)
        r("DELETE", "/pools/{pool}", self.delete_pool)
        r("POST", "/pools/{pool}/updateproperties", self.update_pool_properties)
        r("POST", "/pools/{pool}/resize", self.resize_pool)
        r("POST", "/pools/{pool}/stopresize", self.stop_resize)
        r("POST", "/pools/{pool}/enableautoscale", self.enable_autoscale)
        r("POST", "/pools/{pool}/disableautoscale", self.disable_autoscale)
        r("POST", "/pools/{pool}/evaluateautoscale", self.evaluate_autoscale)
        r("POST", "/pools/{pool}/removenodes", self.remove_nodes)
        r("GET", "/pools/{pool}/nodes", self.list_nodes)
        r("GET", "/pools/{pool}/nodes/{node}", self.get_node)
        r("POST", "/pools/{pool}/nodes/{node}/{action}", self.node_action)
        r("GET", "/pools/{pool}/nodes/{node}/files", self.list_node_files)
        r("GET", "/pools/{pool}/nodes/{node}/files/{path}", self.get_node_file)
        r("HEAD", "/pools/{pool}/nodes/{node}/files/{path}", self.get_node_file)
        r("DELETE", "/pools/{pool}/nodes/{node}/files/{path}", self.delete_node_file)
        r("GET", "/jobs", self.list_jobs)
        r("POST", "/jobs", self.add_job)
        r("GET", "/jobs/{job}", self.get_job)
        r("PATCH", "/jobs/{job}", self.patch_job)
        r("PUT", "/jobs/{job}", self.replace_job)
        r("DELETE", "/jobs/{job}", self.delete_job)
        r("POST", "/jobs/{job}/terminate", self.terminate_job)
        r("POST", "/jobs/{job}/disable", self.disable_job)
        r("POST", "/jobs/{job}/enable", self.enable_job)
        r("GET", "/jobs/{job}/taskcounts", self.task_counts)
        r("GET", "/jobs/{job}/jobpreparationandreleasetaskstatus", self.prep_release_status)
        r("GET", "/jobs/{job}/tasks", self.list_tasks)
        r("POST", "/jobs/{job}/tasks", self.add_task)
        r("POST", "/jobs/{job}/addtaskcollection", self.add_task_collection)
        r("GET", "/jobs/{job}/tasks/{task}", self.get_task)
        r("PUT", "/jobs/{job}/tasks/{task}", self.update_task)
        r("DELETE", "/jobs/{job}/tasks/{task}", self.delete_task)
        r("GET", "/jobs/{job}/tasks/{task}/subtasksinfo", self.list_subtasks)
        r("POST", "/jobs/{job}/tasks/{task}/terminate", self.terminate_task)
        r("POST", "/jobs/{job}/tasks/{task}/reactivate", self.reactivate_task)
        r("GET", "/jobs/{job}/tasks/{task}/files", self.list_task_files)
        r("GET", "/jobs/{job}/tasks/{task}/files/{path}", self.get_task_file)
        r("HEAD", "/jobs/{job}/tasks/{task}/files/{path}", self.get_task_file)
        r("DELETE", "/jobs/{job}/tasks/{task}/files/{path}", self.delete_task_file)

    def _route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append(Route(method, pattern, handler))

    # ----------------------------------------------------------------- dispatch
    def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            response = self._dispatch(request)
        except BatchError as exc:
            if exc.schema:
                self._refused(request, exc)
            response = Response.json(exc.status, exc.body(self.state.account_url, request_id, self.state.clock.iso_now()))
        response.headers.setdefault("request-id", request_id)
        client_request_id = request.headers.get("client-request-id")
        if client_request_id:
            response.headers["client-request-id"] = client_request_id
        response.headers.setdefault("DataServiceVersion", "3.0")
        if request.operation is not None and 200 <= response.status < 300:
            self._declared_headers(request, response)
        return response

    def _refused(self, request: Request, exc: BatchError) -> None:
        """Keep (and log) a body the schema refused: tests assert SAJE's own requests never are."""
        self.state.refused(request.operation.name if request.operation else None, request.raw_path, exc.code,
                           dict(exc.values))

    # Entity collections in a data plane path, and the state lookup for each (pool, node, job, task).
    _ADDRESSED = {"pools": "pool", "nodes": "node", "jobs": "job", "tasks": "task"}

    def _declared_headers(self, request: Request, response: Response) -> None:
        """Fill in what the operation's answer declares (ETag, Last-Modified, DataServiceId) and
        the handler did not set, from the entity the path addresses (an action on a pool answers
        with the pool's). Nodes carry no eTag in their REST model: theirs is a digest of the node."""
        present = {k.lower() for k in response.headers}
        missing = [h for h in request.operation.headers if h.lower() not in present]
        wanted = [h for h in missing if h in ("ETag", "Last-Modified", "DataServiceId")]
        if not wanted:
            return
        with self.state.lock:
            rest = self._addressed(request.segments)
        if rest is None:
            return
        if "ETag" in wanted:
            response.headers["ETag"] = rest.get("eTag") or "0x8D" + hashlib.sha256(
                json.dumps(rest, sort_keys=True).encode()).hexdigest()[:13].upper()
        if "Last-Modified" in wanted:
            moment = rest.get("lastModified") or rest.get("stateTransitionTime")
            response.headers["Last-Modified"] = rfc1123(parse_iso(moment) if moment else self.state.clock.now())
        if "DataServiceId" in wanted:
            response.headers["DataServiceId"] = rest["url"]

    def _addressed(self, segments: list[str]) -> dict[str, Any] | None:
        ids: dict[str, str] = {}
        for collection, item in zip(segments[::2], segments[1::2]):
            if collection not in self._ADDRESSED:
                break
            ids[self._ADDRESSED[collection]] = item
        try:
            if "task" in ids:
                return self.state.task(ids["job"], ids["task"]).rest
            if "job" in ids:
                return self.state.job(ids["job"]).rest
            if "node" in ids:
                return self.state.node(ids["pool"], ids["node"]).rest
            if "pool" in ids:
                return self.state.pool(ids["pool"]).rest
        except BatchError:
            return None
        return None

    def _dispatch(self, request: Request) -> Response:
        self._check_api_version(request)
        segments = request.segments
        path = "/" + "/".join(quote(s, safe="") for s in segments)
        matched_path = False
        for route in self.routes:
            match = route.regex.match(path) if route.file_regex is None else route.file_regex.match(path)
            if not match:
                continue
            matched_path = True
            if route.method != request.method:
                continue
            params = {k: _unquote(v) for k, v in match.groupdict().items()}
            request.schema = schema.for_api_version(request.query.get("api-version"))
            request.operation = self._operation(request.method, path, request.schema)
            return route.handler(request, **params)
        if matched_path:
            raise BatchError(405, "UnsupportedHttpVerb", f"The resource doesn't support the specified HTTP verb {request.method}.")
        raise BatchError(404, "InvalidUri", "The requested URI does not represent any resource on the server.")

    @staticmethod
    def _operation(method: str, path: str, version_schema: schema.Schema) -> schema.Operation | None:
        """The SDK operation this request is (its body model, statuses, headers); literal paths first."""
        candidates = [o for o in version_schema.operations if o.method == method and o.pattern.match(path)]
        return min(candidates, key=lambda o: o.path.count("{"), default=None)

    def _check_api_version(self, request: Request) -> None:
        version = request.query.get("api-version")
        if not version:
            raise BatchError(400, "MissingRequiredQueryParameter", "A query parameter that's mandatory for this request is not specified.",
                             [("QueryParameterName", "api-version")])
        if version not in API_VERSIONS:
            raise errors.invalid_query("api-version", version, "The specified api version is not supported by this service.")

    # ----------------------------------------------------------------- helpers
    def _body(self, request: Request, *, whole: bool = True) -> dict[str, Any]:
        """The request body as the service reads it, checked against the operation's body model.

        whole=False checks only that the body can be read (addtaskcollection validates each
        task on its own, so one bad task fails alone)."""
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise BatchError(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.",
                             [("Reason", f"The body is not valid JSON: {exc}.")]) from None
        if body is None:
            body = {}
        model = request.operation.body if request.operation else None
        if model is None:
            if not isinstance(body, dict):
                raise BatchError(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.")
            return body
        if not whole:
            request_schema.readable(model, body, request.schema)
            return body
        return request_schema.validated(model, body, request.schema)

    @staticmethod
    def _task_reader(request: Request) -> Callable[[Any], dict[str, Any]]:
        """How a task of this request is read: its api-version's task model (a task collection's
        item model), so one task of a collection can fail alone."""
        model = request.operation.body
        value = request.schema.models[model]["properties"].get("value")
        if value is not None and value["type"] == "array":
            model = value["items"]["model"]
        return lambda body: request_schema.validated(model, body, request.schema)

    @staticmethod
    def _projected(request: Request | None, rest: dict[str, Any]) -> dict[str, Any]:
        """The entity as the request's api-version has it (see Schema.project)."""
        model = request.operation.response if request is not None and request.operation else None
        if model is None or model not in request.schema.models:
            return rest
        return request.schema.project(model, rest)

    def _entity(self, rest: dict[str, Any], collection: str, request: Request | None = None) -> Response:
        if request is not None:
            self._check_conditions(request, rest)
        rest = self._projected(request, rest)
        payload = {"odata.metadata": f"{self.state.account_url}/$metadata#{collection}/@Element", **rest}
        if request is not None and request.query.get("$select"):
            payload = {"odata.metadata": payload["odata.metadata"], **odata.select_fields(rest, request.query["$select"])}
        return Response.json(200, payload, self._entity_headers(rest))

    @staticmethod
    def _entity_headers(rest: dict[str, Any]) -> dict[str, str]:
        headers = {}
        if rest.get("eTag"):
            headers["ETag"] = rest["eTag"]
        if rest.get("lastModified"):
            headers["Last-Modified"] = rfc1123(parse_iso(rest["lastModified"]))
        return headers

    def _created(self, rest: dict[str, Any]) -> Response:
        headers = self._entity_headers(rest)
        headers["DataServiceId"] = rest["url"]
        headers["Location"] = rest["url"]
        return Response.empty(201, headers)

    def _accepted(self, rest: dict[str, Any] | None, status: int = 202) -> Response:
        headers = self._entity_headers(rest) if rest else {}
        if rest:
            headers["DataServiceId"] = rest["url"]
        return Response.empty(status, headers)

    def _check_conditions(self, request: Request, rest: dict[str, Any]) -> None:
        """If-Match / If-None-Match / If-(Un)Modified-Since, as the service honours them."""
        etag = rest.get("eTag")
        if_match = _bare_etag(request.headers.get("If-Match"))
        if if_match and if_match != "*" and if_match != etag:
            raise BatchError(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")
        if_none = _bare_etag(request.headers.get("If-None-Match"))
        if if_none and (if_none == "*" or if_none == etag):
            if request.method in ("GET", "HEAD"):
                raise BatchError(304, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")
            raise BatchError(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")
        modified = parse_iso(rest["lastModified"]).replace(microsecond=0) if rest.get("lastModified") else None
        from email.utils import parsedate_to_datetime

        since = request.headers.get("If-Modified-Since")
        if since and modified and modified <= parsedate_to_datetime(since):
            raise BatchError(304 if request.method in ("GET", "HEAD") else 412, "ConditionNotMet",
                             "The condition specified using HTTP conditional header(s) is not met.")
        unmodified = request.headers.get("If-Unmodified-Since")
        if unmodified and modified and modified > parsedate_to_datetime(unmodified):
            raise BatchError(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")

    def _list(self, request: Request, items: list[dict[str, Any]], collection: str, kind: str | None) -> Response:
        """Filter, select and page a collection; the skip token is opaque and carries the position."""
        query = request.query
        try:
            limit = int(query.get("maxresults", MAX_RESULTS))
        except ValueError:
            raise errors.invalid_query("maxresults", query.get("maxresults"), "The value must be an integer.") from None
        if not 1 <= limit <= MAX_RESULTS:
            raise errors.invalid_query("maxresults", limit, f"The value must be between 1 and {MAX_RESULTS}.")
        token = query.get("$skiptoken")
        start = 0
        if token:
            try:
                start = int(json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["offset"])
            except (ValueError, KeyError, TypeError):
                raise errors.invalid_query("$skiptoken", token, "The continuation token is not valid.") from None
        try:
            odata.validate_expand(query.get("$expand"), kind)
            predicate = odata.compile_filter(query["$filter"], kind) if query.get("$filter") else None
        except odata.ODataError as exc:
            name = "$expand" if "expand" in str(exc).lower() else "$filter"
            raise errors.invalid_query(name, query.get(name), str(exc)) from None
        page, position = [], start
        select = query.get("$select")
        while position < len(items) and len(page) < limit:
            item = items[position]
            position += 1
            if predicate is None or predicate(item):
                item = self._projected(request, item)
                page.append(odata.select_fields(item, select) if select else item)
        payload: dict[str, Any] = {"odata.metadata": f"{self.state.account_url}/$metadata#{collection}", "value": page}
        if position < len(items) and len(page) == limit:
            next_token = base64.urlsafe_b64encode(json.dumps({"offset": position}).encode()).decode().rstrip("=")
            params = {k: v for k, v in query.items() if k not in ("$skiptoken", "api-version")}
            params["$skiptoken"] = next_token
            link = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
            payload["odata.nextLink"] = f"{self.state.account_url}/{request.raw_path.strip('/')}?{link}"
        return Response.json(200, payload)

    # ----------------------------------------------------------------- account
    def list_supported_images(self, request: Request) -> Response:
        return self._list(request, self.state.supported_images(), "supportedimages", "supportedimages")

    def list_pool_node_counts(self, request: Request) -> Response:
        return self._list(request, self.state.pool_node_counts(), "poolnodecounts", "poolnodecounts")

    # ----------------------------------------------------------------- pools
    def list_pools(self, request: Request) -> Response:
        with self.state.lock:
            items = [p.rest for p in self.state.pools.values()]
            return self._list(request, items, "pools", "pools")

    def add_pool(self, request: Request) -> Response:
        pool = self.state.add_pool(self._body(request))
        return self._created(pool.rest)

    def get_pool(self, request: Request, pool: str) -> Response:
        with self.state.lock:
            return self._entity(self.state.pool(pool).rest, "pools", request)

    def pool_exists(self, request: Request, pool: str) -> Response:
        with self.state.lock:
            found = self.state.pools.get(pool)
            if found is None:
                return Response.empty(404)
            self._check_conditions(request, found.rest)
            return Response.empty(200, self._entity_headers(found.rest))

    def patch_pool(self, request: Request, pool: str) -> Response:
        with self.state.lock:
            self._check_conditions(request, self.state.pool(pool).rest)
            return self._accepted(self.state.patch_pool(pool, self._body(request)).rest, 200)

    def update_pool_properties(self, request: Request, pool: str) -> Response:
        return self._accepted(self.state.replace_pool_properties(pool, self._body(request)).rest, 204)

    def delete_pool(self, request: Request, pool: str) -> Response:
        with self.state.lock:
            self._check_conditions(request, self.state.pool(pool).rest)
            self.state.delete_pool(pool)
        return Response.empty(202)

    def resize_pool(self, request: Request, pool: str) -> Response:
        self.state.resize_pool(pool, self._body(request))
        return self._accepted(self.state.pool(pool).rest)

    def stop_resize(self, request: Request, pool: str) -> Response:
        self.state.stop_resize(pool)
        return self._accepted(self.state.pool(pool).rest)

    def enable_autoscale(self, request: Request, pool: str) -> Response:
        return self._accepted(self.state.set_autoscale(pool, self._body(request)).rest, 200)

    def disable_autoscale(self, request: Request, pool: str) -> Response:
        return self._accepted(self.state.disable_autoscale(pool).rest, 200)

    def evaluate_autoscale(self, request: Request, pool: str) -> Response:
        body = self._body(request)
        if not body.get("autoScaleFormula"):
            raise errors.missing_property("autoScaleFormula")
        run = self.state.evaluate_autoscale(pool, body["autoScaleFormula"])
        return Response.json(200, {"odata.metadata": f"{self.state.account_url}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.AutoScaleRun", **run})

    def remove_nodes(self, request: Request, pool: str) -> Response:
        self.state.remove_nodes(pool, self._body(request))
        return self._accepted(self.state.pool(pool).rest)

    # ----------------------------------------------------------------- nodes
    def list_nodes(self, request: Request, pool: str) -> Response:
        with self.state.lock:
            items = [n.rest for n in self.state.pool(pool).nodes.values()]
            return self._list(request, items, "nodes", "nodes")

    def get_node(self, request: Request, pool: str, node: str) -> Response:
        with self.state.lock:
            return self._entity(self.state.node(pool, node).rest, "nodes", request)

    def node_action(self, request: Request, pool: str, node: str, action: str) -> Response:
        if action not in ("reboot", "reimage", "disablescheduling", "enablescheduling"):
            raise BatchError(404, "InvalidUri", "The requested URI does not represent any resource on the server.")
        body = self._body(request)
        self.state.node_action(pool, node, action, body)
        return Response.empty(202 if action in ("reboot", "reimage") else 200)

    def _node_root(self, pool: str, node: str) -> Path:
        with self.state.lock:
            return Path(self.state.node(pool, node).root)

    def list_node_files(self, request: Request, pool: str, node: str) -> Response:
        root = self._node_root(pool, node)
        url = f"{self.state.url('pools', pool, 'nodes', node)}/files"
        return self._list(request, _file_entries(root, url, recursive=_flag(request, "recursive")), "files", "files")

    def get_node_file(self, request: Request, pool: str, node: str, path: str) -> Response:
        root = self._node_root(pool, node)
        return _serve_file(request, root, path, f"{self.state.url('pools', pool, 'nodes', node)}/files")

    def delete_node_file(self, request: Request, pool: str, node: str, path: str) -> Response:
        return _delete_file(request, self._node_root(pool, node), path)

    # ----------------------------------------------------------------- jobs
    def list_jobs(self, request: Request) -> Response:
        with self.state.lock:
            return self._list(request, [j.rest for j in self.state.jobs.values()], "jobs", "jobs")

    def add_job(self, request: Request) -> Response:
        return self._created(self.state.add_job(self._body(request)).rest)

    def get_job(self, request: Request, job: str) -> Response:
        with self.state.lock:
            return self._entity(self.state.job(job).rest, "jobs", request)

    def patch_job(self, request: Request, job: str) -> Response:
        with self.state.lock:
            self._check_conditions(request, self.state.job(job).rest)
            return self._accepted(self.state.patch_job(job, self._body(request)).rest, 200)

    def replace_job(self, request: Request, job: str) -> Response:
        with self.state.lock:
            self._check_conditions(request, self.state.job(job).rest)
            return self._accepted(self.state.patch_job(job, self._body(request), replace=True).rest, 200)

    def delete_job(self, request: Request, job: str) -> Response:
        with self.state.lock:
            self._check_conditions(request, self.state.job(job).rest)
            self.state.delete_job(job)
        return Response.empty(202)

    def terminate_job(self, request: Request, job: str) -> Response:
        body = self._body(request)
        self.state.terminate_job(job, body.get("terminateReason") or "UserTerminate")
        return self._accepted(self.state.job(job).rest)

    def disable_job(self, request: Request, job: str) -> Response:
        body = self._body(request)
        with self.state.lock:
            j = self.state.job(job)
            if j.state != "active":
                raise errors.conflict("JobNotActive", "The specified job is not in an active state.")
            option = body.get("disableTasks", "requeue")
            for task in list(j.tasks.values()):
                if task.state in ("running", "preparing") and option in ("requeue", "terminate"):
                    if option == "requeue":
                        self.state.requeue(task, reason="job disabled")
                    else:
                        self.state.terminate_task(job, task.id)
            self.state.set_state(j.rest, "disabled", model="BatchJob")
            self.state.save_job(j)
            return self._accepted(j.rest)

    def enable_job(self, request: Request, job: str) -> Response:
        with self.state.lock:
            j = self.state.job(job)
            if j.state not in ("disabled", "disabling"):
                raise errors.conflict("JobNotDisabled", "The specified job is not in a disabled state.")
            self.state.set_state(j.rest, "active", model="BatchJob")
            self.state.save_job(j)
            self.state.notify()
            return self._accepted(j.rest)

    def task_counts(self, request: Request, job: str) -> Response:
        counts = self.state.task_counts(job)
        return Response.json(200, {"odata.metadata": f"{self.state.account_url}/$metadata#taskcountsresult/@Element", **counts})

    def prep_release_status(self, request: Request, job: str) -> Response:
        with self.state.lock:
            j = self.state.job(job)
            if not j.rest.get("jobPreparationTask") and not j.rest.get("jobReleaseTask"):
                # REST reference (List Preparation And Release Task Status): 409 JobPreparationTaskNotSpecified.
                raise errors.conflict("JobPreparationTaskNotSpecified",
                                      "The specified job does not have a job preparation task.")
            return self._list(request, list(j.prep_release.values()), "jobpreparationandreleasetaskstatuslist", None)

    # ----------------------------------------------------------------- tasks
    def list_tasks(self, request: Request, job: str) -> Response:
        with self.state.lock:
            items = [t.rest for t in self.state.job(job).tasks.values()]
            return self._list(request, items, "tasks", "tasks")

    def add_task(self, request: Request, job: str) -> Response:
        return self._created(self.state.add_task(job, self._body(request), read=self._task_reader(request)).rest)

    def add_task_collection(self, request: Request, job: str) -> Response:
        if len(request.body) > MAX_COLLECTION_BYTES:
            raise BatchError(413, "RequestBodyTooLarge", "The request body is too large and exceeds the maximum permissible limit.",
                             [("MaxLimit", str(MAX_COLLECTION_BYTES))])
        body = self._body(request, whole=False)
        tasks = body.get("value")
        if not tasks:
            raise errors.missing_property("value")
        if len(tasks) > MAX_TASKS_PER_COLLECTION:
            raise errors.invalid_property("value", len(tasks),
                                          f"The number of tasks in a collection cannot exceed {MAX_TASKS_PER_COLLECTION}.")
        results = self.state.add_task_collection(job, tasks, read=self._task_reader(request))
        return Response.json(200, {"odata.metadata": f"{self.state.account_url}/$metadata#taskaddresult", "value": results})

    def get_task(self, request: Request, job: str, task: str) -> Response:
        with self.state.lock:
            return self._entity(self.state.task(job, task).rest, "tasks", request)

    def update_task(self, request: Request, job: str, task: str) -> Response:
        with self.state.lock:
            self._check_conditions(request, self.state.task(job, task).rest)
            return self._accepted(self.state.patch_task(job, task, self._body(request)).rest, 200)

    def delete_task(self, request: Request, job: str, task: str) -> Response:
        with self.state.lock:
            self._check_conditions(request, self.state.task(job, task).rest)
            self.state.delete_task(job, task)
        return Response.empty(200)

    def list_subtasks(self, request: Request, job: str, task: str) -> Response:
        with self.state.lock:
            t = self.state.task(job, task)
            return Response.json(200, {"odata.metadata": f"{self.state.account_url}/$metadata#subtaskinfo",
                                       "value": [dict(s) for s in t.subtasks]})

    def terminate_task(self, request: Request, job: str, task: str) -> Response:
        with self.state.lock:
            self._check_conditions(request, self.state.task(job, task).rest)
        self.state.terminate_task(job, task)
        return self._accepted(self.state.task(job, task).rest, 204)

    def reactivate_task(self, request: Request, job: str, task: str) -> Response:
        self.state.reactivate_task(job, task)
        return self._accepted(self.state.task(job, task).rest, 204)

    def _task_root(self, job: str, task: str) -> tuple[Path, str]:
        with self.state.lock:
            t = self.state.task(job, task)
            node = self._task_node(t)
            if t.state == "active" and node is None:
                # As observed (MicrosoftDocs/azure-docs#53298): 409 OperationInvalidForCurrentState.
                raise BatchError(409, "OperationInvalidForCurrentState",
                                 "The specified operation is not valid for the current state of the resource.",
                                 [("Reason", "The files of the specified task cannot be accessed as the task state is still active")])
            if node is None:
                raise BatchError(409, "TaskFilesUnavailable",
                                 "The node files for the task are not available: its node has left the pool.")
            root = node.layout.task_dir(t.job_id, t.id)
            return root, f"{t.rest['url']}/files"

    def _task_node(self, task: Task) -> Node | None:
        info = task.rest.get("nodeInfo") or {}
        pool = self.state.pools.get(info.get("poolId", ""))
        return pool.nodes.get(info.get("nodeId", "")) if pool else None

    def list_task_files(self, request: Request, job: str, task: str) -> Response:
        root, url = self._task_root(job, task)
        return self._list(request, _file_entries(root, url, recursive=_flag(request, "recursive")), "files", "files")

    def get_task_file(self, request: Request, job: str, task: str, path: str) -> Response:
        root, url = self._task_root(job, task)
        return _serve_file(request, root, path, url)

    def delete_task_file(self, request: Request, job: str, task: str, path: str) -> Response:
        root, _ = self._task_root(job, task)
        return _delete_file(request, root, path)


def _bare_etag(value: str | None) -> str | None:
    """A conditional header's entity tag as the service compares it: quotes (and W/) ignored."""
    if not value:
        return value
    value = value.strip()
    return value[2:].strip('"') if value.startswith("W/") else value.strip('"')


# --------------------------------------------------------------------- files
def _unquote(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value)


def _flag(request: Request, name: str) -> bool:
    return str(request.query.get(name, "false")).lower() == "true"


def _resolve(root: Path, path: str) -> Path:
    target = (root / path.lstrip("/")).resolve()
    if root.resolve() not in (target, *target.parents):
        raise BatchError(403, "FileAccessDenied", "Access to the requested file is denied.")
    return target


def _file_properties(path: Path, name: str, base_url: str) -> dict[str, Any]:
    """A file list entry; directories carry no properties, and contentLength is an int64, which
    the wire carries as a JSON string (spec example Tasks_ListTaskFiles: "contentLength": "1813")."""
    stat = path.stat()
    entry: dict[str, Any] = {"name": name, "url": f"{base_url}/{quote(name, safe='')}", "isDirectory": path.is_dir()}
    if not path.is_dir():
        entry["properties"] = {
            "creationTime": _iso_ts(stat.st_ctime), "lastModified": _iso_ts(stat.st_mtime),
            "contentLength": str(stat.st_size),
            "contentType": mimetypes.guess_type(name)[0] or "application/octet-stream",
            "fileMode": oct(stat.st_mode)[2:].rjust(6, "0"),
        }
    return entry


def _iso_ts(ts: float) -> str:
    from datetime import datetime, timezone

    from .timeutil import iso

    return iso(datetime.fromtimestamp(ts, timezone.utc))


def _file_entries(root: Path, base_url: str, *, recursive: bool) -> list[dict[str, Any]]:
    if not root.exists():
        return []
    entries = []
    walker = sorted(root.rglob("*")) if recursive else sorted(root.iterdir())
    for path in walker:
        name = path.relative_to(root).as_posix()
        try:
            entries.append(_file_properties(path, name, base_url))
        except FileNotFoundError:
            continue
    return entries


def _serve_file(request: Request, root: Path, path: str, base_url: str) -> Response:
    target = _resolve(root, path)
    if not target.exists():
        raise BatchError(404, "FileNotFound", "The specified file does not exist.")
    stat = target.stat()
    if target.is_dir():
        raise BatchError(409, "FileIsDirectory" if request.method != "HEAD" else "FileIsDirectory", "The specified path is a directory.")
    headers = {
        "ocp-creation-time": rfc1123(_dt(stat.st_ctime)), "ocp-batch-file-isdirectory": "false",
        "ocp-batch-file-url": f"{base_url}/{quote(path, safe='')}", "ocp-batch-file-mode": oct(stat.st_mode)[2:].rjust(6, "0"),
        "Content-Type": "application/octet-stream", "Last-Modified": rfc1123(_dt(stat.st_mtime)),
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(stat.st_size)
        return Response(200, b"", headers)
    since = request.headers.get("If-Modified-Since")
    if since:
        from email.utils import parsedate_to_datetime

        if _dt(stat.st_mtime).replace(microsecond=0) <= parsedate_to_datetime(since):
            return Response(304, b"", headers)
    data = target.read_bytes()
    byte_range = request.headers.get("ocp-range")
    if byte_range:
        match = re.match(r"^bytes=(\d*)-(\d*)$", byte_range.strip())
        if not match or (match.group(1) == "" and match.group(2) == ""):
            raise errors.invalid_header("ocp-range", byte_range, "The range must look like bytes=start-end.")
        start_text, end_text = match.groups()
        if start_text == "":
            start, end = max(0, len(data) - int(end_text)), len(data) - 1
        else:
            start, end = int(start_text), (int(end_text) if end_text else len(data) - 1)
        if start >= len(data) and len(data) > 0:
            raise BatchError(416, "InvalidRange", "The range specified is invalid for the current size of the resource.")
        data = data[start:end + 1]
    return Response(200, data, headers)


def _delete_file(request: Request, root: Path, path: str) -> Response:
    target = _resolve(root, path)
    if not target.exists():
        raise BatchError(404, "FileNotFound", "The specified file does not exist.")
    if target.is_dir():
        if not _flag(request, "recursive") and any(target.iterdir()):
            raise BatchError(409, "DirectoryNotEmpty", "The directory is not empty; pass recursive=true to delete it.")
        shutil.rmtree(target)
    else:
        os.unlink(target)
    return Response.empty(200)


def _dt(ts: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc)


__all__ = ["BatchApi", "API_VERSIONS", "utcnow"]
