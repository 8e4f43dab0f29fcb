"""Python helpers shared by the real-peer pytest suites (tests/eg, tests/spark, tests/gateway)
and by the scripts that drive real peers outside pytest (bench/eg_bench.py,
bench/gateway_bench.py, scripts/demo.py), kept in one package so each helper exists once.

  kernels   ports, /proc process helpers, the Jupyter REST + WebSocket client, the kernel
            lifecycle scenario, the runner of EG's own itests
  gateway   gateway-lite and Jupyter Server/Lab as subprocesses, reaping (tests/gateway)
  spark     Spark kernels through EG, and proof that nothing they started survives (tests/spark)

It is found through tests/ on the import path: pytest puts it there from the repository's
pytest.ini (`pythonpath = tests`); the shell wrappers of the scripts (bench/eg.sh,
bench/gateway.sh, scripts/demo.sh) put it on PYTHONPATH. Import it as `from support.kernels
import ...`.
"""
