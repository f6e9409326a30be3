"""What the backend's mixed-in parts (`NetworkQueries`, `SourceNotifications`, `Contributions`) use of the
`MetriportBackend` they are mixed into: declared for the type checker only (at run time they derive from `object`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .faults import Faults
    from .models import Delivery, Document, DocumentQuery, NetworkQuery, Patient, PatientAdditions
    from .storage import FileStore

    class BackendCore:
        clock: Callable[[], float]
        delay_s: float
        cx_id: str
        public_base_url: str
        faults: Faults
        files: FileStore
        _lock: threading.RLock
        patients: dict[str, Patient]
        documents: dict[str, list[Document]]
        document_queries: dict[str, DocumentQuery]
        network_queries: dict[str, NetworkQuery]
        patient_additions: dict[str, PatientAdditions]
        document_uploads: dict[str, dict]

        def _patient(self, pid: str) -> Patient: ...
        def _snapshot(self, pid: str) -> Patient: ...
        def _save(self, kind: str, key: str, data: Any) -> None: ...
        def _save_patient_state(self, pid: str) -> None: ...
        def _with_urls(self, docs: list[Document]) -> list[dict]: ...
        def _document_download_done(self, patient: Patient, q: DocumentQuery) -> None: ...
        def schedule(self, delay_s: float, job: Callable[[], None]) -> None: ...
        def patient_entries(self, patient: Patient) -> list[dict]: ...
        def store_file(
            self,
            content: bytes | Callable[[], bytes],
            content_type: str,
            name: str,
            expires_s: int = ...,
            expired: bool = False,
        ) -> str: ...
        def send_webhook(
            self, type_: str, payload: dict, metadata: dict | None, request_id: str | None = None
        ) -> Delivery: ...
        def additions(self, pid: str) -> PatientAdditions: ...
        def patient_record(self, patient: Patient) -> list[dict]: ...
else:
    BackendCore = object
