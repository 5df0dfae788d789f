"""The server side: the asynchronous loop (loop.py), what it sends and takes back (messages.py),
its atomic checkpoint (checkpoint.py), Flower's FedAvg rounds (fedavg.py) and the Flower
ServerApp (app.py, ``edgekit.federated.server.app:app``). Importing this package imports nothing
heavy; import the modules."""
