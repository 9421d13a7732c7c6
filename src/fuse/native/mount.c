// Mounting and unmounting: as root, /dev/fuse and mount(2) directly; otherwise fusermount3, which opens /dev/fuse,
// mounts, and hands the descriptor back over a socketpair as libfuse does. Knows nothing of the protocol spoken after.
#include "thinfuse.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

// Receives the /dev/fuse descriptor fusermount3 opened for us (unprivileged mounts).
static int receive_fd(int sock) {
  char ccmsg[CMSG_SPACE(sizeof(int))];
  char c;
  struct iovec iov = {.iov_base = &c, .iov_len = 1};
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ccmsg;
  msg.msg_controllen = sizeof(ccmsg);
  ssize_t rv;
  do rv = recvmsg(sock, &msg, 0);
  while (rv < 0 && errno == EINTR);
  if (rv <= 0) return -1;
  struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
  if (!cm || cm->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(cm), sizeof(fd));
  return fd;
}

extern char **environ;

static int mount_fusermount(const char *mnt, const char *opts, char *why, size_t whylen) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) { snprintf(why, whylen, "socketpair: %s", strerror(errno)); return -1; }
  // The child's environment is built before fork: only async-signal-safe calls may follow it in a threaded process.
  char commfd[40];
  snprintf(commfd, sizeof(commfd), "_FUSE_COMMFD=%d", sv[1]);
  size_t n = 0;
  while (environ[n]) n++;
  char **envp = calloc(n + 2, sizeof(char *));
  if (!envp) { snprintf(why, whylen, "out of memory"); close(sv[0]); close(sv[1]); return -1; }
  for (size_t i = 0; i < n; i++) envp[i] = environ[i];
  envp[n] = commfd;
  char *const argv3[] = {"fusermount3", "-o", (char *)opts, "--", (char *)mnt, NULL};
  char *const argv2[] = {"fusermount", "-o", (char *)opts, "--", (char *)mnt, NULL};
  pid_t pid = fork();
  if (pid < 0) { snprintf(why, whylen, "fork: %s", strerror(errno)); free(envp); close(sv[0]); close(sv[1]); return -1; }
  if (pid == 0) {
    close(sv[0]);
    fcntl(sv[1], F_SETFD, 0);
    execvpe("fusermount3", argv3, envp);
    execvpe("fusermount", argv2, envp);
    _exit(127);
  }
  free(envp);
  close(sv[1]);
  int fd = receive_fd(sv[0]);
  close(sv[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (fd < 0) snprintf(why, whylen, "fusermount3 failed (exit %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  return fd;
}

int fuse_mount(const char *mnt, const char *fsname, const char *opts, char *why, size_t whylen) {
  int fd = -1;
  int rdonly = 0, suid = 0, dev = 0;
  char data[1536], extra[1024] = "";
  {
    // The flags we turn into MS_* bits; the rest goes to the kernel as data.
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", opts);
    for (char *save = NULL, *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
      if (!strcmp(t, "ro")) rdonly = 1;
      else if (!strcmp(t, "suid")) suid = 1;
      else if (!strcmp(t, "nosuid")) suid = 0;
      else if (!strcmp(t, "dev")) dev = 1;
      else if (!strcmp(t, "nodev")) dev = 0;
      else if (*t) {
        if (*extra) strncat(extra, ",", sizeof(extra) - strlen(extra) - 1);
        strncat(extra, t, sizeof(extra) - strlen(extra) - 1);
      }
    }
  }
  if (geteuid() == 0) {
    fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      snprintf(why, whylen, "open /dev/fuse: %s", strerror(errno));
    } else {
      struct stat st;
      if (stat(mnt, &st) < 0) st.st_mode = S_IFDIR;
      snprintf(data, sizeof(data), "fd=%d,rootmode=%o,user_id=%u,group_id=%u%s%s", fd, st.st_mode & S_IFMT, getuid(), getgid(),
               *extra ? "," : "", extra);
      unsigned long flags = MS_NOATIME | (rdonly ? MS_RDONLY : 0) | (suid ? 0 : MS_NOSUID) | (dev ? 0 : MS_NODEV);
      char type[300];
      snprintf(type, sizeof(type), "fuse.%s", fsname);
      if (mount(fsname, mnt, type, flags, data) < 0) {
        snprintf(why, whylen, "mount(2): %s", strerror(errno));
        close(fd);
        fd = -1;
      }
    }
  } else {
    // fusermount3 forces nosuid,nodev on users other than root anyway; they are passed so the request says what it wants.
    // noatime as mount(2) gets it above: the same options whoever mounts.
    char fo[1536];
    snprintf(fo, sizeof(fo), "%s%s,%s,noatime,fsname=%s,subtype=%s%s%s", rdonly ? "ro," : "", suid ? "suid" : "nosuid", dev ? "dev" : "nodev",
             fsname, fsname, *extra ? "," : "", extra);
    fd = mount_fusermount(mnt, fo, why, whylen);
    if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  return fd;
}

int fuse_unmount(const char *mnt) { return umount2(mnt, MNT_DETACH) < 0 ? -errno : 0; }
