"""Deployment: ONNX export of the inference path and an HTTP inference service.

* :mod:`multiflow.deploy.onnx_export`: :class:`InferenceGraph` (backbone + flow + scoring +
  threshold as one ``nn.Module``) and :func:`export_onnx`.
* :mod:`multiflow.deploy.serve`: :func:`create_app`, a FastAPI application around
  :class:`multiflow.engine.predict.Predictor`.

Their optional dependencies (onnx; fastapi, uvicorn, python-multipart: the extras `export` and
`serve`) are imported inside these modules only, through :func:`multiflow._optional.require`,
which names the extra to install when one is missing.
"""
