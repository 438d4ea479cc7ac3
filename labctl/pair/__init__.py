"""One kernel x scenario pair: the steps on a running guest, the runner, snapshots to fork from."""
