// Command kafka-load is the bench's live Kafka producer and reply reader,
// compiled so that it takes little of the cores it shares with what it
// measures (bench/kafka_bench.py runs it and does all the accounting).
//
// It publishes `rate` requests a second for `duration` seconds on an
// open-loop schedule: request i is due at t0 + i/rate and everything due is
// sent at once, so a client that falls behind shows as latency, not as a
// lower rate. Each request is `{"customer_id": "<id>"}` keyed by the id
// (partitioned by murmur2, as Java clients and the runners' replies are),
// with a correlation_id header `<run>:<i>`. Meanwhile it reads the reply
// topic from its ends as they were before the first send, and stops once
// every request has a reply or `drain` seconds after the last send.
//
// It decides nothing: it writes what happened, for the bench to count.
//
//	PREFIX.sends    one little-endian int64 per request: ns from t0 to its send
//	                (-1: never handed to the producer)
//	PREFIX.replies  one line per reply of this run read before it stopped
//	                (duplicates included): correlation id, ns from t0 to its
//	                receipt, 1 if the reply carries an error, tab-separated
//	PREFIX.json     run, rate, sent, failed sends, read errors, CPU, wall time
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

type reply struct {
	cid   []byte
	at    int64
	error bool
}

type summary struct {
	Run          string  `json:"run"`
	Rate         int     `json:"rate"`
	Sent         int     `json:"sent"`
	SendSeconds  float64 `json:"send_seconds"`
	FailedSends  int64   `json:"failed_sends"`
	ReadErrors   int64   `json:"read_errors"`
	CPUSeconds   float64 `json:"cpu_seconds"`
	WallSeconds  float64 `json:"wall_seconds"`
	ClientDetail string  `json:"client"`
}

func main() {
	bootstrap := flag.String("bootstrap", "", "broker address")
	requestTopic := flag.String("request-topic", "", "topic to publish requests to")
	replyTopic := flag.String("reply-topic", "", "topic the replies come back on")
	idsPath := flag.String("ids", "", "customer ids, one a line, used in turn")
	rate := flag.Int("rate", 1000, "requests a second")
	duration := flag.Float64("duration", 30, "seconds of sending")
	lingerMs := flag.Int("linger-ms", 0, "producer batching (0: none)")
	drain := flag.Float64("drain", 30, "seconds to wait for replies after the last send")
	out := flag.String("out", "", "prefix of the output files")
	flag.Parse()
	if os.Getenv("GOMAXPROCS") == "" {
		// One thread runs Go code at a time: the client's work is light, and
		// idle threads spinning for work would take CPU from the cores it
		// shares with what it measures.
		runtime.GOMAXPROCS(1)
	}
	if *bootstrap == "" || *requestTopic == "" || *replyTopic == "" || *idsPath == "" || *out == "" || *rate <= 0 {
		fmt.Fprintln(os.Stderr, "kafka-load: --bootstrap, --request-topic, --reply-topic, --ids, --out and a positive --rate are required")
		os.Exit(2)
	}
	if err := run(*bootstrap, *requestTopic, *replyTopic, *idsPath, *rate, *duration, *lingerMs, *drain, *out); err != nil {
		fmt.Fprintln(os.Stderr, "kafka-load:", err)
		os.Exit(1)
	}
}

func readIDs(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ids [][]byte
	for _, line := range bytes.Split(data, []byte("\n")) {
		if line = bytes.TrimSpace(line); len(line) > 0 {
			ids = append(ids, line)
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("no customer ids in %s", path)
	}
	return ids, nil
}

// replyEnds is where the reader starts: each reply partition's end now.
func replyEnds(bootstrap, topic string) (map[string]map[int32]kgo.Offset, error) {
	client, err := kgo.NewClient(kgo.SeedBrokers(bootstrap))
	if err != nil {
		return nil, err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(client).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("reply topic %s: %w", topic, err)
	}
	start := map[string]map[int32]kgo.Offset{topic: {}}
	ends.Each(func(o kadm.ListedOffset) { start[topic][o.Partition] = kgo.NewOffset().At(o.Offset) })
	if len(start[topic]) == 0 {
		return nil, fmt.Errorf("reply topic %s has no partitions", topic)
	}
	return start, nil
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func run(bootstrap, requestTopic, replyTopic, idsPath string, rate int, duration float64, lingerMs int, drain float64, out string) error {
	ids, err := readIDs(idsPath)
	if err != nil {
		return err
	}
	start, err := replyEnds(bootstrap, replyTopic)
	if err != nil {
		return err
	}
	consumer, err := kgo.NewClient(
		kgo.SeedBrokers(bootstrap),
		kgo.ConsumePartitions(start),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if err != nil {
		return err
	}
	defer consumer.Close()
	producer, err := kgo.NewClient(
		kgo.SeedBrokers(bootstrap),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(time.Duration(lingerMs)*time.Millisecond),
		kgo.ProducerBatchMaxBytes(256*1024),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		// murmur2 of the key, as Java clients (and the runners' replies)
		// place keyed records.
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
	)
	if err != nil {
		return err
	}
	defer producer.Close()
	// The request topic must exist: a run against a missing one fails here,
	// rather than counting every request lost.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	requestEnds, err := kadm.NewClient(producer).ListEndOffsets(ctx, requestTopic)
	cancel()
	if err != nil {
		return err
	}
	if err := requestEnds.Error(); err != nil {
		return fmt.Errorf("request topic %s: %w", requestTopic, err)
	}

	runTag := fmt.Sprintf("%08x", rand.Uint32())
	prefix := []byte(runTag + ":")
	n := int(float64(rate) * duration)
	sends := make([]int64, n)
	for i := range sends {
		sends[i] = -1
	}
	seen := make([]bool, n)
	var remaining atomic.Int64
	remaining.Store(int64(n))
	var failed, readErrors atomic.Int64
	var replies []reply
	stop := make(chan struct{})
	var reader sync.WaitGroup

	cpu0 := cpuSeconds()
	t0 := time.Now().Add(100 * time.Millisecond)
	reader.Add(1)
	go func() {
		defer reader.Done()
		for remaining.Load() > 0 {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			fetches := consumer.PollFetches(ctx)
			cancel()
			now := time.Since(t0).Nanoseconds()
			fetches.EachError(func(_ string, _ int32, err error) {
				// The poll's own timeout is not a read error.
				if !errors.Is(err, context.DeadlineExceeded) {
					readErrors.Add(1)
				}
			})
			fetches.EachRecord(func(r *kgo.Record) {
				for _, h := range r.Headers {
					if h.Key != "correlation_id" {
						continue
					}
					if !bytes.HasPrefix(h.Value, prefix) {
						return
					}
					replies = append(replies, reply{
						cid:   append([]byte(nil), h.Value...),
						at:    now,
						error: bytes.Contains(r.Value, []byte(`"error"`)),
					})
					// Only to know when to stop; the bench does the counting.
					if i, err := strconv.Atoi(string(h.Value[len(prefix):])); err == nil && i >= 0 && i < n && !seen[i] {
						seen[i] = true
						remaining.Add(-1)
					}
					return
				}
			})
		}
	}()

	step := float64(time.Second) / float64(rate)
	for i := 0; i < n; {
		now := time.Since(t0)
		if due := time.Duration(float64(i) * step); now < due {
			time.Sleep(due - now)
			continue
		}
		// Everything due by now goes out at once.
		upto := int(float64(now)/step) + 1
		if upto > n {
			upto = n
		}
		for ; i < upto; i++ {
			cid := ids[i%len(ids)]
			value := make([]byte, 0, len(cid)+20)
			value = append(append(append(value, `{"customer_id": "`...), cid...), `"}`...)
			sends[i] = time.Since(t0).Nanoseconds()
			producer.Produce(context.Background(), &kgo.Record{
				Topic:   requestTopic,
				Key:     cid,
				Value:   value,
				Headers: []kgo.RecordHeader{{Key: "correlation_id", Value: []byte(runTag + ":" + strconv.Itoa(i))}},
			}, func(_ *kgo.Record, err error) {
				if err != nil {
					failed.Add(1)
				}
			})
		}
	}
	sendSeconds := time.Since(t0).Seconds()
	deadline := time.Now().Add(time.Duration(drain * float64(time.Second)))
	flushCtx, cancelFlush := context.WithDeadline(context.Background(), deadline)
	if err := producer.Flush(flushCtx); err != nil {
		// Not acknowledged in time: failed, each counted by its promise
		// before this returns (the summary reads the count next).
		abortCtx, cancelAbort := context.WithTimeout(context.Background(), 30*time.Second)
		if err := producer.AbortBufferedRecords(abortCtx); err != nil {
			cancelAbort()
			cancelFlush()
			return fmt.Errorf("requests not acknowledged within the drain could not be failed: %w", err)
		}
		cancelAbort()
	}
	cancelFlush()
	for remaining.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	reader.Wait()
	wall := time.Since(t0).Seconds()
	cpu := cpuSeconds() - cpu0

	if err := writeSends(out+".sends", sends); err != nil {
		return err
	}
	if err := writeReplies(out+".replies", replies); err != nil {
		return err
	}
	data, err := json.MarshalIndent(summary{
		Run: runTag, Rate: rate, Sent: n, SendSeconds: sendSeconds,
		FailedSends: failed.Load(), ReadErrors: readErrors.Load(),
		CPUSeconds: cpu, WallSeconds: wall, ClientDetail: "franz-go (tools/kafka-load)",
	}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(out+".json", data, 0o644)
}

func writeSends(path string, sends []int64) error {
	buf := make([]byte, 8*len(sends))
	for i, s := range sends {
		binary.LittleEndian.PutUint64(buf[8*i:], uint64(s))
	}
	return os.WriteFile(path, buf, 0o644)
}

func writeReplies(path string, replies []reply) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for _, r := range replies {
		flag := byte('0')
		if r.error {
			flag = '1'
		}
		w.Write(r.cid)
		w.WriteByte('\t')
		w.WriteString(strconv.FormatInt(r.at, 10))
		w.WriteByte('\t')
		w.WriteByte(flag)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
