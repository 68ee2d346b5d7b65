// Command nats-go-publish measures JetStream's publish rate with the Go client, nats.go, as
// its users publish fastest: PublishAsync on one connection per producer, each with up to
// -window acknowledgements outstanding (PublishAsyncMaxPending), into -streams R3 file streams
// (BENCH0, BENCH1, ...; a record goes to the stream its key picks, as riptide-jetstream-bench
// does). It prints the acknowledged records/s of the measured window as JSON. It is the
// yardstick for riptide-jetstream-bench's publisher (docs/benchmarks.md, The JetStream side);
// run it against a fresh JetStream cluster, since it creates the streams.
//
// Build (Debian packages golang-go and golang-github-nats-io-go-nats-dev, no module download):
//
//	cd bench/peers/nats-go-publish
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o /tmp/nats-go-publish .
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	servers := flag.String("servers", "nats://127.0.0.1:14222", "")
	streams := flag.Int("streams", 4, "")
	producers := flag.Int("producers", 4, "")
	window := flag.Int("window", 1024, "")
	size := flag.Int("bytes", 100, "")
	keys := flag.Int("keys", 1000, "")
	warm := flag.Duration("warmup", 5*time.Second, "")
	dur := flag.Duration("duration", 20*time.Second, "")
	flag.Parse()
	nc, err := nats.Connect(*servers)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	js, _ := nc.JetStream()
	for s := 0; s < *streams; s++ {
		name := fmt.Sprintf("BENCH%d", s)
		_, err := js.AddStream(&nats.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Replicas: 3, Storage: nats.FileStorage})
		if err != nil {
			fmt.Fprintln(os.Stderr, "add stream:", err)
			os.Exit(1)
		}
	}
	var acked int64
	var counting int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	payload := []byte(strings.Repeat("x", *size))
	for p := 0; p < *producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			c, err := nats.Connect(*servers)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return
			}
			defer c.Close()
			j, _ := c.JetStream(nats.PublishAsyncMaxPending(*window))
			k := p
			for {
				select {
				case <-stop:
					<-j.PublishAsyncComplete()
					return
				default:
				}
				key := k % *keys
				subj := fmt.Sprintf("BENCH%d.k%d", key%*streams, key)
				f, err := j.PublishAsync(subj, payload)
				if err != nil {
					continue
				}
				go func() {
					select {
					case <-f.Ok():
						if atomic.LoadInt32(&counting) == 1 {
							atomic.AddInt64(&acked, 1)
						}
					case <-f.Err():
					}
				}()
				k += *producers
			}
		}(p)
	}
	time.Sleep(*warm)
	atomic.StoreInt32(&counting, 1)
	start := time.Now()
	time.Sleep(*dur)
	atomic.StoreInt32(&counting, 0)
	el := time.Since(start).Seconds()
	n := atomic.LoadInt64(&acked)
	close(stop)
	wg.Wait()
	fmt.Printf("{\"acked_per_s\": %.0f}\n", float64(n)/el)
}
