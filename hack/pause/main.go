// The local node's pause image (hack/cluster up --node): the sandbox process of every
// pod. It waits for SIGTERM or SIGINT and reaps the children it inherits as PID 1.
// With -http ADDR it also answers every HTTP request with its hostname, which the
// tests use as the cheapest Service backend there is (same image, nothing pulled).
// With -get URL (repeatable) it is a client instead: GET each URL (https with the
// pod's service account CA and token), write one line per URL to the termination
// log, exit 0 only if every answer was 200.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type urls []string

func (u *urls) String() string     { return strings.Join(*u, ",") }
func (u *urls) Set(v string) error { *u = append(*u, v); return nil }

const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"

func get(list []string) int {
	tr := &http.Transport{TLSClientConfig: &tls.Config{}}
	if pem, err := os.ReadFile(sa + "ca.crt"); err == nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tr.TLSClientConfig.RootCAs = pool
	}
	token, _ := os.ReadFile(sa + "token")
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	var out strings.Builder
	rc := 0
	for _, u := range list {
		req, _ := http.NewRequest("GET", u, nil)
		if strings.HasPrefix(u, "https:") && len(token) > 0 {
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		}
		resp, err := client.Do(req)
		if err != nil {
			fmt.Fprintf(&out, "%s error %v\n", u, err)
			rc = 1
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		resp.Body.Close()
		fmt.Fprintf(&out, "%s %d %s\n", u, resp.StatusCode, strings.TrimSpace(string(body)))
		if resp.StatusCode != 200 {
			rc = 1
		}
	}
	os.Stdout.WriteString(out.String())
	_ = os.WriteFile("/dev/termination-log", []byte(out.String()), 0o644)
	return rc
}

func main() {
	addr := flag.String("http", "", "also serve HTTP on this address (answers with the hostname)")
	var gets urls
	flag.Var(&gets, "get", "GET this URL, report, exit (repeatable)")
	flag.Parse()
	if len(gets) > 0 {
		os.Exit(get(gets))
	}
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
