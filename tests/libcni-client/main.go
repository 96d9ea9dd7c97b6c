// cniclient: a small command-line front end over Debian's libcni 1.1.2, the library podman,
// containerd and cri-o use to run CNI plugins. It gives the tests a real CNI runtime with
// per-step control: conflist loading, VERSION validation, prevResult chaining, reverse-order
// DEL, the result cache and libcni's own input checks.
//
// Usage: cniclient add|check|del|validate|cached <net> [netns] [containerID] [ifname]
//
// Environment: NETCONFPATH (default /etc/cni/net.d), CNI_PATH (default /opt/cni/bin),
// CNI_CACHE_DIR (default /var/lib/cni), CNI_ARGS ("K=V;K2=V2"), CAP_ARGS (JSON object).
//
// Output: add and cached print the result JSON; validate prints {"cniVersion","capabilities"}.
// Errors go to stderr; a CNI error is also printed as its JSON on stdout. Exit status 1.
//
// Build: GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= go build -o cniclient main.go
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: cniclient add|check|del|validate|cached <net> [netns] [containerID] [ifname]")
	os.Exit(2)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func fail(verb string, err error) {
	fmt.Fprintf(os.Stderr, "cniclient %s: %v\n", verb, err)
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		fmt.Fprintf(os.Stderr, "cniclient %s: CNI error code %d\n", verb, cniErr.Code)
		out, _ := json.Marshal(map[string]interface{}{
			"code": cniErr.Code, "msg": cniErr.Msg, "details": cniErr.Details, "error": err.Error(),
		})
		fmt.Println(string(out))
	}
	os.Exit(1)
}

func parseArgs(s string) ([][2]string, error) {
	var out [][2]string
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		parts := strings.SplitN(kv, "=", 2)
		if len(parts) != 2 || parts[0] == "" {
			return nil, fmt.Errorf("CNI_ARGS: %q is not KEY=VALUE", kv)
		}
		out = append(out, [2]string{parts[0], parts[1]})
	}
	return out, nil
}

func printJSON(verb string, v interface{}) {
	out, err := json.Marshal(v)
	if err != nil {
		fail(verb, fmt.Errorf("cannot encode output: %w", err))
	}
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	verb, netName := os.Args[1], os.Args[2]
	arg := func(i int, def string) string {
		if len(os.Args) > i {
			return os.Args[i]
		}
		return def
	}
	netns, containerID, ifName := arg(3, ""), arg(4, ""), arg(5, "eth0")

	list, err := libcni.LoadConfList(envOr("NETCONFPATH", "/etc/cni/net.d"), netName)
	if err != nil {
		fail(verb, err)
	}
	cacheDir := envOr("CNI_CACHE_DIR", "/var/lib/cni")
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(envOr("CNI_PATH", "/opt/cni/bin")), cacheDir, nil)

	cniArgs, err := parseArgs(os.Getenv("CNI_ARGS"))
	if err != nil {
		fail(verb, err)
	}
	caps := map[string]interface{}{}
	if s := os.Getenv("CAP_ARGS"); s != "" {
		if err := json.Unmarshal([]byte(s), &caps); err != nil {
			fail(verb, fmt.Errorf("CAP_ARGS is not a JSON object: %w", err))
		}
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         ifName,
		Args:           cniArgs,
		CapabilityArgs: caps,
		CacheDir:       cacheDir,
	}
	ctx := context.Background()

	switch verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(verb, err)
		}
		printJSON(verb, result)
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(verb, err)
		}
		fmt.Fprintln(os.Stderr, "check ok")
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(verb, err)
		}
		fmt.Fprintln(os.Stderr, "del ok")
	case "validate":
		capabilities, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail(verb, err)
		}
		if capabilities == nil {
			capabilities = []string{}
		}
		printJSON(verb, map[string]interface{}{"cniVersion": list.CNIVersion, "capabilities": capabilities})
	case "cached":
		result, err := cni.GetNetworkListCachedResult(list, rt)
		if err != nil {
			fail(verb, err)
		}
		if result == nil {
			fail(verb, fmt.Errorf("no cached result for %s/%s/%s", netName, containerID, ifName))
		}
		printJSON(verb, result)
	default:
		usage()
	}
}
