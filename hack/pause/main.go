// The local node's pause image (hack/cluster up --node): the sandbox process of every
// pod. It waits for SIGTERM or SIGINT and reaps the children it inherits as PID 1.
// With -http ADDR it also answers every HTTP request with its hostname, which the
// tests use as the cheapest Service backend there is (same image, nothing pulled).
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	addr := flag.String("http", "", "also serve HTTP on this address (answers with the hostname)")
	flag.Parse()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	if *addr != "" {
		host, _ := os.Hostname()
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s\n", host)
		})
		go func() {
			if err := http.ListenAndServe(*addr, nil); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}()
	}
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
