/*
 * kexec-lab-helper: the guest half of the lab's control channel.
 *
 * Runs in the lab's initramfs (primary and capture kernel alike) on the
 * control port: argv[1], else $labctl_control (the kernel passes unknown
 * name=value parameters to init's environment), else ttyS1.  Where a guest
 * architecture has no busybox (riscv64: no Debian 12 port), the helper is
 * PID 1 itself: it mounts what the guest needs and exits on SIGUSR1 (the
 * init-exit trigger) like guests/init.  It reads one command per text line from the
 * host and answers with one JSON object per line.  It is static and tiny
 * because the guest has nothing but busybox; it makes the syscalls itself so
 * that the lab tests the kernel, not a userspace tool.
 *
 * Commands (host -> guest, space separated, the last field may hold spaces):
 *   hello                               re-send the hello message
 *   load FLAGS KERNEL INITRD CMDLINE    kexec_file_load(2); FLAGS in hex
 *   unload                              kexec_file_load(KEXEC_FILE_UNLOAD)
 *   kexec-tool ARG<TAB>ARG...           run /sbin/kexec (kexec-tools, the legacy
 *                                       kexec_load(2) path) with these arguments
 *   vmcore-pages OFFSET...              SHA-256 of the 4 KiB page of /proc/vmcore at
 *                                       each file offset (hex), for the host to compare
 *                                       with the RAM file (labctl/dump_check.py)
 *   vmcore-dmesg                        the crashed kernel's log read out of the dump by
 *                                       kexec-tools' vmcore-dmesg (its last lines)
 *   kernel-config                       /proc/config.gz, hex encoded, if the kernel has it
 *   save-vmcore                         makedumpfile -F -c -d 23 /proc/vmcore, streamed in
 *                                       a guest-memory window or base64 chunks (--save-vmcore)
 *   panic TRIGGER [CPU]                 crash the kernel: sysrq (sysrq 'c', a NULL
 *                                       dereference), nmi (arm unknown_nmi_panic;
 *                                       the host injects the NMI), init-exit (make
 *                                       PID 1 exit: "Attempted to kill init!");
 *                                       CPU: pin to it first (sysrq only)
 *   cpus                                report the CPUs (online, APIC ids)
 *   cpu-online N                        wait for cpuN (hot-added) and online it
 *   memory-online N                     online offline memory blocks until N are
 *                                       online (hot-added DIMMs), or 30 s pass
 *   reboot                              reboot(LINUX_REBOOT_CMD_KEXEC) into the kernel
 *                                       loaded without the crash flag (kexec reboot)
 *
 * Replies (guest -> host): {"type": "hello"|"loaded"|"unloaded"|"panicking"|
 * "cpus"|"memory"|"error", ...}.  Kernel log records produced during a load are forwarded in
 * "log" so that the host can parse the segment table the kernel printed.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/reboot.h>
#include <linux/reboot.h>
#include <dirent.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/utsname.h>
#include <termios.h>
#include <unistd.h>

#ifndef KEXEC_FILE_UNLOAD
#define KEXEC_FILE_UNLOAD 0x1
#endif
#ifndef KEXEC_FILE_ON_CRASH
#define KEXEC_FILE_ON_CRASH 0x2
#endif
#ifndef KEXEC_FILE_DEBUG
#define KEXEC_FILE_DEBUG 0x8
#endif

#define LINE_MAX_LEN 4096
#define VMCORE_HEAD_MAX (256 * 1024)
#define LOG_MAX_RECORDS 256
#define TOOL_MAX_ARGS 64
#define TOOL_MAX_LINES 4096
#define KEXEC_TOOL "/sbin/kexec"
#define VMCORE_DMESG "/sbin/vmcore-dmesg"
#define PAGE_BYTES 4096
#define DMESG_MAX_LINES 400
#define OUTPUT_MAX_BYTES (512 * 1024)
#define CONFIG_GZ_MAX (512 * 1024)
#define MAKEDUMPFILE "/usr/bin/makedumpfile"
#define SAVE_CHUNK (48 * 1024)
#define SAVE_WINDOW (4 * 1024 * 1024)
#define SAVE_ERRORS "/tmp/makedumpfile.log"
#define PORT_WAIT_TRIES 300	/* x 100 ms: a virtio-console port shows up after init starts */

static FILE *out;
static FILE *in;	/* the host's commands; save-vmcore also reads its acks */

static void put_json_string(const char *s)
{
	fputc('"', out);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}

static void reply_end(void)
{
	fputs("}\n", out);
	fflush(out);
}

static void reply_error(const char *what, int err)
{
	fputs("{\"type\":\"error\",\"what\":", out);
	put_json_string(what);
	fprintf(out, ",\"errno\":%d,\"strerror\":", err);
	put_json_string(strerror(err));
	reply_end();
}

/* The "Crash kernel" line of /proc/iomem: the reserved region, or 0-0. */
static void crashkernel_region(unsigned long *start, unsigned long *end)
{
	char line[256];
	FILE *f = fopen("/proc/iomem", "r");

	*start = *end = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, "Crash kernel"))
			sscanf(line, " %lx-%lx", start, end);
	fclose(f);
}

static void put_file_field(const char *name, const char *path)
{
	char buf[LINE_MAX_LEN] = "";
	FILE *f = fopen(path, "r");

	if (f) {
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		buf[n] = 0;
		buf[strcspn(buf, "\n")] = 0;
		fclose(f);
	}
	fprintf(out, ",\"%s\":", name);
	put_json_string(buf);
}

/*
 * The capture kernel's view of the dump: /proc/vmcore's size and its head
 * (ELF header, program headers and the notes), hex encoded, for the host to
 * check with a real ELF parser.  Reading the whole file would take minutes.
 */
static void put_vmcore_facts(void)
{
	struct stat st;
	Elf64_Ehdr eh;
	Elf64_Phdr ph;
	unsigned long end;
	unsigned char *buf;
	int fd, i;

	if (stat("/proc/vmcore", &st) < 0)
		return;
	fprintf(out, ",\"vmcore_size\":%lld", (long long)st.st_size);
	fd = open("/proc/vmcore", O_RDONLY);
	if (fd < 0 || pread(fd, &eh, sizeof(eh), 0) != sizeof(eh)) {
		fprintf(out, ",\"vmcore_error\":%d", errno);
		if (fd >= 0)
			close(fd);
		return;
	}
	end = eh.e_phoff + (unsigned long)eh.e_phnum * sizeof(ph);
	for (i = 0; i < eh.e_phnum && i < 4096; i++) {
		if (pread(fd, &ph, sizeof(ph), eh.e_phoff + i * sizeof(ph)) != sizeof(ph))
			break;
		if (ph.p_type == PT_NOTE && ph.p_offset + ph.p_filesz > end)
			end = ph.p_offset + ph.p_filesz;
	}
	if (end > VMCORE_HEAD_MAX)
		end = VMCORE_HEAD_MAX;
	buf = malloc(end);
	if (buf && pread(fd, buf, end, 0) == (ssize_t)end) {
		fputs(",\"vmcore_head\":\"", out);
		for (unsigned long j = 0; j < end; j++)
			fprintf(out, "%02x", buf[j]);
		fputc('"', out);
	}
	free(buf);
	close(fd);
}

/*
 * SHA-256 (FIPS 180-4), small and self-contained: the helper is static and
 * links nothing beyond libc.  Used to hash sampled pages of /proc/vmcore so
 * that 32 bytes per page, not the page, cross the serial line.
 */
struct sha256 {
	unsigned int h[8];
	unsigned char block[64];
	unsigned long long length;
	unsigned int used;
};

static const unsigned int sha256_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(struct sha256 *c, const unsigned char *p)
{
	unsigned int w[64], v[8], i;

	for (i = 0; i < 16; i++)
		w[i] = (unsigned int)p[4 * i] << 24 | p[4 * i + 1] << 16 | p[4 * i + 2] << 8 | p[4 * i + 3];
	for (i = 16; i < 64; i++) {
		unsigned int s0 = ROR32(w[i - 15], 7) ^ ROR32(w[i - 15], 18) ^ (w[i - 15] >> 3);
		unsigned int s1 = ROR32(w[i - 2], 17) ^ ROR32(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	memcpy(v, c->h, sizeof(v));
	for (i = 0; i < 64; i++) {
		unsigned int s1 = ROR32(v[4], 6) ^ ROR32(v[4], 11) ^ ROR32(v[4], 25);
		unsigned int ch = (v[4] & v[5]) ^ (~v[4] & v[6]);
		unsigned int t1 = v[7] + s1 + ch + sha256_k[i] + w[i];
		unsigned int s0 = ROR32(v[0], 2) ^ ROR32(v[0], 13) ^ ROR32(v[0], 22);
		unsigned int maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);

		memmove(v + 1, v, 7 * sizeof(v[0]));
		v[4] += t1;
		v[0] = t1 + s0 + maj;
	}
	for (i = 0; i < 8; i++)
		c->h[i] += v[i];
}

static void sha256_init(struct sha256 *c)
{
	static const unsigned int iv[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
	};
	memcpy(c->h, iv, sizeof(iv));
	c->length = 0;
	c->used = 0;
}

static void sha256_update(struct sha256 *c, const unsigned char *p, size_t n)
{
	c->length += n;
	while (n) {
		size_t take = 64 - c->used < n ? 64 - c->used : n;

		memcpy(c->block + c->used, p, take);
		c->used += take;
		p += take;
		n -= take;
		if (c->used == 64) {
			sha256_block(c, c->block);
			c->used = 0;
		}
	}
}

static void sha256_final(struct sha256 *c, unsigned char out[32])
{
	unsigned long long bits = c->length * 8;
	unsigned char pad = 0x80, zero = 0, len[8];
	int i;

	sha256_update(c, &pad, 1);
	while (c->used != 56)
		sha256_update(c, &zero, 1);
	for (i = 0; i < 8; i++)
		len[i] = bits >> (56 - 8 * i);
	sha256_update(c, len, 8);
	for (i = 0; i < 32; i++)
		out[i] = c->h[i / 4] >> (24 - 8 * (i % 4));
}

/* The top-level "System RAM" ranges of /proc/iomem: the memory a dump must cover. */
static void put_system_ram(void)
{
	char line[256];
	unsigned long start, end;
	int n = 0;
	FILE *f = fopen("/proc/iomem", "r");

	fputs(",\"system_ram\":[", out);
	while (f && fgets(line, sizeof(line), f)) {
		if (line[0] == ' ' || !strstr(line, ": System RAM"))
			continue;
		if (sscanf(line, "%lx-%lx", &start, &end) == 2)
			fprintf(out, "%s[%lu,%lu]", n++ ? "," : "", start, end);
	}
	fputc(']', out);
	if (f)
		fclose(f);
}

/* A sysfs file's first line, or null when the kernel has no such file. */
static void put_optional_file(const char *name, const char *path)
{
	if (access(path, F_OK) == 0) {
		put_file_field(name, path);
		return;
	}
	fprintf(out, ",\"%s\":null", name);
}

/*
 * Files whose presence tells the host a kernel option (labctl/kernel_facts.py):
 * kernel/ksysfs.c creates crash_elfcorehdr_size only under CONFIG_CRASH_HOTPLUG,
 * vmcoreinfo under CONFIG_VMCORE_INFO; drivers/base/cpu.c crash_hotplug under
 * CONFIG_CRASH_HOTPLUG; security/lockdown/lockdown.c creates securityfs'
 * lockdown file whenever CONFIG_SECURITY_LOCKDOWN_LSM is built in.
 * kexec_file_load(2) with flags no kernel accepts answers EINVAL (or EPERM) before it
 * touches anything when CONFIG_KEXEC_FILE=y (kernel/kexec_file.c), ENOSYS without it
 * (kernel/sys_ni.c: COND_SYSCALL(kexec_file_load)).
 */
static void put_kernel_facts(void)
{
	int securityfs = mount("securityfs", "/sys/kernel/security", "securityfs", 0, NULL) == 0 ||
			 errno == EBUSY;
	long probe = syscall(SYS_kexec_file_load, -1, -1, 0UL, NULL, ~0UL);
	int kexec_file = !(probe == -1 && errno == ENOSYS);

	fprintf(out, ",\"sysfs\":{\"present\":true,\"securityfs\":%s", securityfs ? "true" : "false");
	put_optional_file("lockdown", "/sys/kernel/security/lockdown");
	put_optional_file("vmcoreinfo", "/sys/kernel/vmcoreinfo");
	put_optional_file("crash_elfcorehdr_size", "/sys/kernel/crash_elfcorehdr_size");
	put_optional_file("crash_hotplug", "/sys/devices/system/cpu/crash_hotplug");
	fprintf(out, ",\"kexec_file_load\":%s", kexec_file ? "true" : "false");
	fprintf(out, ",\"config_gz\":%s}", access("/proc/config.gz", F_OK) == 0 ? "true" : "false");
}

static void cmd_vmcore_pages(char *args)
{
	unsigned char page[PAGE_BYTES], digest[32];
	char *word;
	int fd = open("/proc/vmcore", O_RDONLY), n = 0, i;

	if (fd < 0) {
		reply_error("/proc/vmcore", errno);
		return;
	}
	fprintf(out, "{\"type\":\"vmcore-pages\",\"page_size\":%d,\"pages\":[", PAGE_BYTES);
	while (args && (word = strsep(&args, " "))) {
		unsigned long long offset = strtoull(word, NULL, 16);
		ssize_t got = pread(fd, page, sizeof(page), offset);
		struct sha256 c;

		if (!*word)
			continue;
		fprintf(out, "%s[\"%llx\",", n++ ? "," : "", offset);
		if (got != (ssize_t)sizeof(page)) {
			fprintf(out, "null,%d]", got < 0 ? errno : EIO);
			continue;
		}
		sha256_init(&c);
		sha256_update(&c, page, sizeof(page));
		sha256_final(&c, digest);
		fputc('"', out);
		for (i = 0; i < 32; i++)
			fprintf(out, "%02x", digest[i]);
		fputs("\",0]", out);
	}
	fputc(']', out);
	reply_end();
	close(fd);
}

/* The last max_lines lines a child wrote to fd, as a JSON array; drains fd. */
static void put_output_tail(int fd, int max_lines)
{
	char *buf = malloc(OUTPUT_MAX_BYTES + 1), *p, *line;
	size_t used = 0;
	ssize_t got;
	int lines = 0, n = 0;

	if (!buf) {
		fputs(",\"output\":[]", out);
		return;
	}
	for (;;) {
		if (used == OUTPUT_MAX_BYTES) {	/* keep the newer half */
			memmove(buf, buf + OUTPUT_MAX_BYTES / 2, OUTPUT_MAX_BYTES / 2);
			used = OUTPUT_MAX_BYTES / 2;
		}
		got = read(fd, buf + used, OUTPUT_MAX_BYTES - used);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		used += got;
	}
	buf[used] = 0;
	for (p = buf + used; p > buf; p--)	/* find where the last max_lines lines start */
		if (p[-1] == '\n' && p != buf + used && ++lines >= max_lines)
			break;
	fputs(",\"output\":[", out);
	while ((line = strsep(&p, "\n")) != NULL) {
		if (!*line && !p)
			break;
		if (n++)
			fputc(',', out);
		put_json_string(line);
	}
	fputc(']', out);
	free(buf);
}

/*
 * Start path with argv, its stdout and stderr into a pipe: the pipe's read end, and the
 * child's pid in *pid (-1 if fork failed: the read end then gives EOF at once); -1 after
 * replying the error when there is no pipe.
 */
static int spawn_piped(const char *path, char *const argv[], pid_t *pid)
{
	int pipefd[2];

	if (pipe(pipefd) < 0) {
		reply_error("pipe", errno);
		return -1;
	}
	*pid = fork();
	if (*pid == 0) {
		dup2(pipefd[1], 1);
		dup2(pipefd[1], 2);
		close(pipefd[0]);
		close(pipefd[1]);
		execv(path, argv);
		perror(path);
		_exit(127);
	}
	close(pipefd[1]);
	return pipefd[0];
}

/* A child's end as the host reads it: its exit code, 128 + signal, -1 if it never ran. */
static int reap(pid_t pid)
{
	int status = 0;

	if (pid < 0)
		return -1;
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void cmd_vmcore_dmesg(void)
{
	char *argv[] = { VMCORE_DMESG, "/proc/vmcore", NULL };
	pid_t pid;
	int fd;

	if (access(VMCORE_DMESG, X_OK) < 0) {
		reply_error(VMCORE_DMESG, errno);
		return;
	}
	fd = spawn_piped(VMCORE_DMESG, argv, &pid);
	if (fd < 0)
		return;
	fputs("{\"type\":\"vmcore-dmesg\"", out);
	put_output_tail(fd, DMESG_MAX_LINES);
	close(fd);
	fprintf(out, ",\"rc\":%d", reap(pid));
	reply_end();
}

static void cmd_kernel_config(void)
{
	unsigned char *buf = malloc(CONFIG_GZ_MAX);
	int fd = open("/proc/config.gz", O_RDONLY);
	size_t used = 0;
	ssize_t got;

	fputs("{\"type\":\"kernel-config\"", out);
	if (fd >= 0 && buf) {
		while (used < CONFIG_GZ_MAX && (got = read(fd, buf + used, CONFIG_GZ_MAX - used)) > 0)
			used += got;
		fputs(",\"gz\":\"", out);
		for (size_t i = 0; i < used; i++)
			fprintf(out, "%02x", buf[i]);
		fputc('"', out);
	} else {
		fprintf(out, ",\"errno\":%d", errno);
	}
	reply_end();
	free(buf);
	if (fd >= 0)
		close(fd);
}

static void put_base64(const unsigned char *p, size_t n)
{
	static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i;

	for (i = 0; i + 2 < n; i += 3) {
		fputc(abc[p[i] >> 2], out);
		fputc(abc[(p[i] & 3) << 4 | p[i + 1] >> 4], out);
		fputc(abc[(p[i + 1] & 15) << 2 | p[i + 2] >> 6], out);
		fputc(abc[p[i + 2] & 63], out);
	}
	if (n - i == 1) {
		fputc(abc[p[i] >> 2], out);
		fputc(abc[(p[i] & 3) << 4], out);
		fputs("==", out);
	} else if (n - i == 2) {
		fputc(abc[p[i] >> 2], out);
		fputc(abc[(p[i] & 3) << 4 | p[i + 1] >> 4], out);
		fputc(abc[(p[i + 1] & 15) << 2], out);
		fputc('=', out);
	}
}

/*
 * The physical page of each page of buf (root reads PFNs in /proc/self/pagemap),
 * or 0 when the kernel does not tell.  buf is locked, so its pages stay put.
 */
static void put_pfns(int pagemap, unsigned char *buf, size_t used)
{
	unsigned long long entry, first = (unsigned long)buf / PAGE_BYTES;
	size_t i;

	fputs(",\"pfns\":[", out);
	for (i = 0; i * PAGE_BYTES < used; i++) {
		if (pread(pagemap, &entry, sizeof(entry), (first + i) * sizeof(entry)) != sizeof(entry))
			entry = 0;
		fprintf(out, "%s%llu", i ? "," : "", entry >> 63 ? entry & ((1ULL << 55) - 1) : 0);
	}
	fputc(']', out);
}

static int pagemap_works(int pagemap, unsigned char *buf)
{
	unsigned long long entry = 0;

	buf[0] = 1;	/* fault the page in */
	return pagemap >= 0 &&
	       pread(pagemap, &entry, sizeof(entry), (unsigned long)buf / PAGE_BYTES * sizeof(entry)) == sizeof(entry) &&
	       entry >> 63 && (entry & ((1ULL << 55) - 1));
}

/*
 * A filtered, compressed dump streamed to the host: makedumpfile -F (flattened,
 * so that it can write to a pipe) -c -d 23: zero, cache and free pages left out,
 * user pages kept, because Debian 12's makedumpfile 1.7.2 with -d 31 also drops
 * 6.12 kernel pages as "user" pages (drgn then cannot read the crashed task's
 * task_struct: "Excluded page"; same dump size, docs/findings-dumps.md).  Where the kernel tells physical
 * addresses (pagemap), the stream goes through guest memory: a locked window
 * of SAVE_WINDOW bytes is filled, its page frames and SHA-256 are sent, and the
 * host reads it from the RAM file and answers "next" before it is refilled.
 * Otherwise it goes over this port in base64 chunks.  Then the total and its
 * SHA-256, for the host to check.
 */
static void cmd_save_vmcore(void)
{
	char *argv[] = { MAKEDUMPFILE, "-F", "-c", "-d", "23", "--message-level", "22",
			 "/proc/vmcore", NULL };
	unsigned char *buf, digest[32];
	unsigned long long total = 0;
	struct sha256 c, window;
	int pipefd[2], status = 0, i, seq = 0, pagemap, memory;
	char ack[64];
	pid_t pid;

	if (access(MAKEDUMPFILE, X_OK) < 0) {
		reply_error(MAKEDUMPFILE, errno);
		return;
	}
	buf = mmap(NULL, SAVE_WINDOW, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (buf == MAP_FAILED) {
		reply_error("mmap", errno);
		return;
	}
	pagemap = open("/proc/self/pagemap", O_RDONLY);
	memory = mlock(buf, SAVE_WINDOW) == 0 && pagemap_works(pagemap, buf);
	if (pipe(pipefd) < 0) {
		reply_error("pipe", errno);
		munmap(buf, SAVE_WINDOW);
		return;
	}
	pid = fork();
	if (pid == 0) {
		int errfd = open(SAVE_ERRORS, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		dup2(pipefd[1], 1);
		if (errfd >= 0)
			dup2(errfd, 2);
		close(pipefd[0]);
		close(pipefd[1]);
		execv(MAKEDUMPFILE, argv);
		perror(MAKEDUMPFILE);
		_exit(127);
	}
	close(pipefd[1]);
	sha256_init(&c);
	for (;;) {
		size_t used = 0, limit = memory ? SAVE_WINDOW : SAVE_CHUNK;
		ssize_t got = 0;

		while (used < limit && (got = read(pipefd[0], buf + used, limit - used)) != 0) {
			if (got < 0 && errno == EINTR)
				continue;
			if (got < 0)
				break;
			used += got;
		}
		if (used) {
			sha256_update(&c, buf, used);
			total += used;
			if (memory) {
				sha256_init(&window);
				sha256_update(&window, buf, used);
				sha256_final(&window, digest);
				fprintf(out, "{\"type\":\"vmcore-window\",\"seq\":%d,\"bytes\":%zu,\"sha256\":\"", seq++, used);
				for (i = 0; i < 32; i++)
					fprintf(out, "%02x", digest[i]);
				fputc('"', out);
				put_pfns(pagemap, buf, used);
				reply_end();
				/* the host copies the window out of the RAM file, then says so */
				if (!fgets(ack, sizeof(ack), in) || strncmp(ack, "next", 4))
					break;
			} else {
				fprintf(out, "{\"type\":\"vmcore-chunk\",\"seq\":%d,\"data\":\"", seq++);
				put_base64(buf, used);
				fputc('"', out);
				reply_end();
			}
		}
		if (got <= 0)
			break;
	}
	close(pipefd[0]);
	if (pid > 0) {
		kill(pid, SIGTERM);	/* only if the host stopped early; harmless after its exit */
		waitpid(pid, &status, 0);
	}
	sha256_final(&c, digest);
	fprintf(out, "{\"type\":\"vmcore-saved\",\"channel\":\"%s\",\"rc\":%d,\"bytes\":%llu,\"chunks\":%d,\"sha256\":\"",
		memory ? "memory" : "serial",
		pid < 0 ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), total, seq);
	for (i = 0; i < 32; i++)
		fprintf(out, "%02x", digest[i]);
	fputc('"', out);
	pipefd[0] = open(SAVE_ERRORS, O_RDONLY);
	if (pipefd[0] >= 0) {
		put_output_tail(pipefd[0], 20);
		close(pipefd[0]);
	}
	reply_end();
	if (pagemap >= 0)
		close(pagemap);
	munmap(buf, SAVE_WINDOW);
}

/* A kdump kernel is told where the ELF headers are; /proc/vmcore may still fail. */
static int is_capture_kernel(void)
{
	char buf[LINE_MAX_LEN] = "";
	FILE *f = fopen("/proc/cmdline", "r");

	if (f) {
		buf[fread(buf, 1, sizeof(buf) - 1, f)] = 0;
		fclose(f);
	}
	return access("/proc/vmcore", F_OK) == 0 || strstr(buf, "elfcorehdr=") != NULL;
}

/*
 * The CPUs as this kernel sees them: the online/possible masks and, from
 * /proc/cpuinfo, each online processor's APIC id, which names the vCPU (the
 * capture kernel calls whatever CPU it boots on CPU 0).
 */
static void put_cpu_facts(void)
{
	char line[256];
	int processor = -1, apicid, n = 0;
	FILE *f = fopen("/proc/cpuinfo", "r");

	put_file_field("cpus_online", "/sys/devices/system/cpu/online");
	put_file_field("cpus_possible", "/sys/devices/system/cpu/possible");
	put_file_field("cpus_present", "/sys/devices/system/cpu/present");
	put_file_field("crash_hotplug", "/sys/devices/system/cpu/crash_hotplug");
	fputs(",\"cpus\":[", out);
	while (f && fgets(line, sizeof(line), f) && n < 4096) {
		if (sscanf(line, "processor : %d", &processor) == 1)
			continue;
		if (processor >= 0 && sscanf(line, "apicid : %d", &apicid) == 1) {
			fprintf(out, "%s[%d,%d]", n++ ? "," : "", processor, apicid);
			processor = -1;
		}
	}
	fputc(']', out);
	if (f)
		fclose(f);
}

static void cmd_cpus(int err)
{
	fprintf(out, "{\"type\":\"cpus\",\"errno\":%d", err);
	put_cpu_facts();
	reply_end();
}

/* A hot-added CPU shows up in sysfs once ACPI has processed QEMU's event. */
static void cmd_cpu_online(const char *arg)
{
	char path[128];
	int fd, err = 0, tries;

	snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/online", atoi(arg ? arg : "-1"));
	for (tries = 0; (fd = open(path, O_WRONLY)) < 0 && errno == ENOENT && tries < 300; tries++)
		usleep(100000);
	if (fd < 0)
		err = errno;
	else if (write(fd, "1", 1) < 0)
		err = errno;
	if (fd >= 0)
		close(fd);
	cmd_cpus(err);
}

/*
 * Online every offline memory block (a kernel without auto-online leaves a hot-added
 * DIMM offline); return how many blocks are online.
 */
static int online_memory_blocks(void)
{
	char path[300], state[32];
	struct dirent *e;
	DIR *d = opendir("/sys/devices/system/memory");
	int online = 0, fd;
	ssize_t n;

	while (d && (e = readdir(d))) {
		if (strncmp(e->d_name, "memory", 6) || !e->d_name[6])
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/memory/%s/state", e->d_name);
		fd = open(path, O_RDWR);
		if (fd < 0)
			continue;
		n = read(fd, state, sizeof(state) - 1);
		state[n > 0 ? n : 0] = 0;
		if (!strncmp(state, "offline", 7) && pwrite(fd, "online", 6, 0) == 6)
			strcpy(state, "online");
		online += !strncmp(state, "online", 6);
		close(fd);
	}
	if (d)
		closedir(d);
	return online;
}

static void cmd_memory_online(const char *arg)
{
	int want = atoi(arg ? arg : "0"), online, tries = 0;

	while ((online = online_memory_blocks()) < want && tries++ < 300)
		usleep(100000);
	fprintf(out, "{\"type\":\"memory\",\"online_blocks\":%d,\"wanted\":%d", online, want);
	put_file_field("block_size_bytes", "/sys/devices/system/memory/block_size_bytes");
	reply_end();
}

static void cmd_hello(void)
{
	struct utsname u;
	unsigned long ck_start, ck_end;
	int capture = is_capture_kernel();

	uname(&u);
	crashkernel_region(&ck_start, &ck_end);
	fputs("{\"type\":\"hello\",\"role\":", out);
	put_json_string(capture ? "capture" : "primary");
	fputs(",\"release\":", out);
	put_json_string(u.release);
	fprintf(out, ",\"crashkernel\":[%lu,%lu]", ck_start, ck_end);
	put_file_field("cmdline", "/proc/cmdline");
	put_file_field("kexec_crash_loaded", "/sys/kernel/kexec_crash_loaded");
	put_cpu_facts();
	put_system_ram();
	put_kernel_facts();
	if (capture)
		put_vmcore_facts();
	reply_end();
}

/* Forward the kernel log records written since kmsg_fd was positioned. */
static void put_kmsg_records(int kmsg_fd)
{
	char rec[LINE_MAX_LEN];
	int n = 0;

	fputs(",\"log\":[", out);
	while (kmsg_fd >= 0 && n < LOG_MAX_RECORDS) {
		ssize_t len = read(kmsg_fd, rec, sizeof(rec) - 1);
		char *msg;

		if (len < 0 && errno == EPIPE)
			continue;	/* records overwritten; keep reading */
		if (len <= 0)
			break;
		rec[len] = 0;
		msg = strchr(rec, ';');
		msg = msg ? msg + 1 : rec;
		msg[strcspn(msg, "\n")] = 0;
		if (n++)
			fputc(',', out);
		put_json_string(msg);
	}
	fputc(']', out);
}

static int open_kmsg_at_end(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);

	if (fd >= 0)
		lseek(fd, 0, SEEK_END);
	return fd;
}

/* Ask dynamic debug for the pr_debug lines that describe the segments. */
static void enable_kexec_debug_prints(void)
{
	static const char *const files[] = {
		"kexec_file.c", "kexec-bzimage64.c", "crash.c", "machine_kexec_64.c",
	};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		int fd = open("/proc/dynamic_debug/control", O_WRONLY);
		if (fd < 0)
			return;
		dprintf(fd, "file %s +p", files[i]);
		close(fd);
	}
}

static long kexec_file_load(int kfd, int ifd, const char *cmdline, unsigned long flags)
{
	unsigned long len = cmdline ? strlen(cmdline) + 1 : 0;

	return syscall(SYS_kexec_file_load, kfd, ifd, len, cmdline, flags);
}

static void cmd_load(char *args)
{
	char *flags_s = strsep(&args, " ");
	char *kernel = strsep(&args, " ");
	char *initrd = strsep(&args, " ");
	const char *cmdline = args ? args : "";
	unsigned long flags;
	int kfd, ifd = -1, kmsg, err = 0, debug = 0;
	long rc;

	if (!flags_s || !kernel || !initrd) {
		reply_error("load: usage: load FLAGS KERNEL INITRD CMDLINE", EINVAL);
		return;
	}
	flags = strtoul(flags_s, NULL, 16);
	kfd = open(kernel, O_RDONLY);
	if (kfd < 0) {
		reply_error(kernel, errno);
		return;
	}
	if (strcmp(initrd, "-") && (ifd = open(initrd, O_RDONLY)) < 0) {
		reply_error(initrd, errno);
		close(kfd);
		return;
	}
	kmsg = open_kmsg_at_end();
	rc = kexec_file_load(kfd, ifd, cmdline, flags);
	if (rc < 0 && errno == EINVAL && (flags & KEXEC_FILE_DEBUG)) {
		/* Kernels before 6.7 have no KEXEC_FILE_DEBUG: use dynamic debug. */
		enable_kexec_debug_prints();
		flags &= ~KEXEC_FILE_DEBUG;
		debug = 1;
		rc = kexec_file_load(kfd, ifd, cmdline, flags);
	}
	if (rc < 0)
		err = errno;
	fprintf(out, "{\"type\":\"loaded\",\"rc\":%ld,\"errno\":%d,\"strerror\":", rc, err);
	put_json_string(err ? strerror(err) : "");
	fprintf(out, ",\"flags\":%lu,\"dynamic_debug\":%s", flags, debug ? "true" : "false");
	put_file_field("kexec_crash_loaded", "/sys/kernel/kexec_crash_loaded");
	put_kmsg_records(kmsg);
	reply_end();
	if (kmsg >= 0)
		close(kmsg);
	close(kfd);
	if (ifd >= 0)
		close(ifd);
}

static void cmd_unload(void)
{
	long rc = kexec_file_load(-1, -1, NULL, KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH);

	fprintf(out, "{\"type\":\"unloaded\",\"rc\":%ld,\"errno\":%d", rc, rc < 0 ? errno : 0);
	put_file_field("kexec_crash_loaded", "/sys/kernel/kexec_crash_loaded");
	reply_end();
}

/* Read a child's output and forward it as a bounded array of lines. */
static void put_output_lines(int fd)
{
	FILE *f = fdopen(fd, "r");
	char line[LINE_MAX_LEN];
	int n = 0;

	fputs(",\"output\":[", out);
	while (f && fgets(line, sizeof(line), f)) {
		if (n >= TOOL_MAX_LINES)
			continue;	/* drain, so the child never blocks */
		line[strcspn(line, "\n")] = 0;
		if (n++)
			fputc(',', out);
		put_json_string(line);
	}
	fputc(']', out);
	if (f)
		fclose(f);
}

static void cmd_kexec_tool(char *args)
{
	char *argv[TOOL_MAX_ARGS + 2] = { KEXEC_TOOL };
	int argc = 1, fd, kmsg;
	pid_t pid;

	while (args && argc <= TOOL_MAX_ARGS)
		argv[argc++] = strsep(&args, "\t");
	kmsg = open_kmsg_at_end();	/* before the tool runs: its kernel messages are the evidence */
	fd = spawn_piped(KEXEC_TOOL, argv, &pid);
	if (fd < 0) {
		if (kmsg >= 0)
			close(kmsg);
		return;
	}
	fputs("{\"type\":\"kexec-tool\"", out);
	put_output_lines(fd);	/* reads to EOF and closes fd */
	fprintf(out, ",\"rc\":%d", reap(pid));
	put_file_field("kexec_crash_loaded", "/sys/kernel/kexec_crash_loaded");
	put_kmsg_records(kmsg);
	reply_end();
	if (kmsg >= 0)
		close(kmsg);
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);

	if (fd >= 0) {
		if (write(fd, text, strlen(text)) < 0)
			reply_error(path, errno);
		close(fd);
	} else {
		reply_error(path, errno);
	}
}

static void cmd_panic(char *args)
{
	const char *trigger = strsep(&args, " ");
	cpu_set_t set;

	if (args && *args) {	/* sysrq-trigger's handler runs on the writer's CPU */
		CPU_ZERO(&set);
		CPU_SET(atoi(args), &set);
		if (sched_setaffinity(0, sizeof(set), &set) < 0) {
			reply_error("sched_setaffinity", errno);
			return;
		}
	}
	if (!strcmp(trigger, "nmi"))
		write_file("/proc/sys/kernel/unknown_nmi_panic", "1");
	fputs("{\"type\":\"panicking\",\"trigger\":", out);
	put_json_string(trigger);
	fprintf(out, ",\"cpu\":%d", sched_getcpu());
	reply_end();
	sync();
	if (!strcmp(trigger, "sysrq")) {
		write_file("/proc/sys/kernel/sysrq", "1");
		write_file("/proc/sysrq-trigger", "c");
	} else if (!strcmp(trigger, "nmi")) {
		/* Armed before the reply above went out; the host injects the NMI. */
	} else if (!strcmp(trigger, "init-exit")) {
		/* guests/init exits on SIGUSR1; the kernel panics when PID 1 dies. */
		if (kill(1, SIGUSR1) < 0)
			reply_error("kill init", errno);
	} else {
		reply_error("panic: unknown trigger", EINVAL);
	}
}

/* A kexec reboot, as `kexec -e` does it: say so first, since success never returns. */
static void cmd_reboot(void)
{
	fputs("{\"type\":\"rebooting\"", out);
	put_file_field("kexec_loaded", "/sys/kernel/kexec_loaded");
	reply_end();
	sync();
	if (reboot(LINUX_REBOOT_CMD_KEXEC) < 0)
		reply_error("reboot(LINUX_REBOOT_CMD_KEXEC)", errno);
}

static void dispatch(char *line)
{
	char *verb = strsep(&line, " ");

	if (!strcmp(verb, "hello"))
		cmd_hello();
	else if (!strcmp(verb, "load"))
		cmd_load(line);
	else if (!strcmp(verb, "unload"))
		cmd_unload();
	else if (!strcmp(verb, "kexec-tool"))
		cmd_kexec_tool(line);
	else if (!strcmp(verb, "vmcore-pages"))
		cmd_vmcore_pages(line);
	else if (!strcmp(verb, "vmcore-dmesg"))
		cmd_vmcore_dmesg();
	else if (!strcmp(verb, "kernel-config"))
		cmd_kernel_config();
	else if (!strcmp(verb, "save-vmcore"))
		cmd_save_vmcore();
	else if (!strcmp(verb, "panic"))
		cmd_panic(line ? line : (char[]){"sysrq"});
	else if (!strcmp(verb, "cpus"))
		cmd_cpus(0);
	else if (!strcmp(verb, "cpu-online"))
		cmd_cpu_online(line);
	else if (!strcmp(verb, "memory-online"))
		cmd_memory_online(line);
	else if (!strcmp(verb, "reboot"))
		cmd_reboot();
	else
		reply_error(verb, ENOSYS);
}

static int open_port(const char *path)
{
	struct termios t;
	int fd = -1;

	for (int i = 0; i < PORT_WAIT_TRIES && fd < 0; i++) {
		fd = open(path, O_RDWR | O_NOCTTY);
		/* not there yet (ENOENT), or its driver not bound yet (ENODEV: a kdump
		 * kernel's virtio-console port comes up after devtmpfs has the node) */
		if (fd < 0 && (errno == ENOENT || errno == ENODEV || errno == ENXIO))
			usleep(100000);
		else if (fd < 0)
			break;
	}
	if (fd < 0)
		return -1;
	if (tcgetattr(fd, &t) == 0) {
		cfmakeraw(&t);
		cfsetspeed(&t, B115200);
		tcsetattr(fd, TCSANOW, &t);
	}
	return fd;
}

static void exit_on_usr1(int sig)
{
	(void)sig;
	_exit(1);	/* PID 1 exits: "Attempted to kill init!" */
}

/*
 * PID 1 without busybox: mount /proc, /sys and /dev, say so on the console,
 * then stay as init (reaping, exiting on SIGUSR1) while a child runs the helper.
 */
static void be_init(const char *port)
{
	FILE *console;
	struct utsname u;

	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	signal(SIGUSR1, exit_on_usr1);
	uname(&u);
	console = fopen("/dev/console", "w");
	if (console) {
		fprintf(console, "kexec-lab: guest ready (%s); control channel on %s; "
			"the helper is init (no shell on this architecture)\n", u.release, port);
		fclose(console);
	}
	if (fork() == 0) {
		signal(SIGUSR1, SIG_DFL);
		return;
	}
	for (;;)
		if (wait(NULL) < 0 && errno == ECHILD)
			pause();
}

int main(int argc, char **argv)
{
	const char *env_port = getenv("labctl_control");
	/* As PID 1, argv holds the kernel's unknown parameters (no_timer_check), not a port. */
	const char *port = argc > 1 && getpid() != 1 ? argv[1] : env_port ? env_port : "/dev/ttyS1";
	char line[LINE_MAX_LEN];
	int fd;

	if (getpid() == 1)
		be_init(port);
	fd = open_port(port);

	if (fd < 0) {
		perror(port);
		return 1;
	}
	in = fdopen(fd, "r");
	out = fdopen(dup(fd), "w");
	if (!in || !out)
		return 1;
	cmd_hello();
	while (fgets(line, sizeof(line), in)) {
		line[strcspn(line, "\r\n")] = 0;
		if (line[0])
			dispatch(line);
	}
	return 0;
}
