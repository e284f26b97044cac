"""A CppUvicornWorker subclass, configured through CONFIG_KWARGS, serving WSGI applications."""

from __future__ import annotations

from cppuvicorn.workers import CppUvicornWorker


class CppUvicornWSGIWorker(CppUvicornWorker):
    CONFIG_KWARGS = {**CppUvicornWorker.CONFIG_KWARGS, "interface": "wsgi"}
